# Helpers shared by every room's CMakeLists.txt.

# glassbox_add_library(NAME SOURCES ... [DEPS ...])
# A static library whose headers are included as "room/file.h" from the repository root.
function(glassbox_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# glassbox_add_test(NAME SOURCES ... [DEPS ...] [LABELS ...])
# A Catch2 executable; each TEST_CASE becomes a ctest test carrying LABELS, so
# `ctest -L engine` or `ctest -L model` runs one layer. Tests run from the repository root
# so fixture paths like tests/fixtures/... resolve.
function(glassbox_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  # catch_discover_tests splits test names at ';', leaving ctest entries that run nothing.
  foreach(source ${ARG_SOURCES})
    file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/${source} bad REGEX "TEST_CASE\\(\"[^\"]*;")
    if(bad)
      message(FATAL_ERROR "${source}: a TEST_CASE name holds ';', which splits it into ctest "
                          "entries that run nothing: ${bad}")
    endif()
  endforeach()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE glassbox_catch_main ${ARG_DEPS})
  catch_discover_tests(${name}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    PROPERTIES LABELS "${ARG_LABELS}")
endfunction()
