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
# A Catch2 executable; each TEST_CASE becomes a ctest test carrying LABELS, plus the labels
# `model` and `slow` when the test case has the Catch tags [model] (needs the real models
# under models/) or [slow], so `ctest -L engine`, `ctest -L model` or `ctest -LE slow` run one
# layer. Tests run from the repository root so fixture paths like tests/fixtures/... resolve.
function(glassbox_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  # catch_discover_tests splits test names at ';', leaving ctest entries that run nothing
  # (checked here when the build is configured, and by --warn NoTests below when they run).
  foreach(source ${ARG_SOURCES})
    file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/${source} bad REGEX "TEST_CASE\\(\"[^\"]*;")
    if(bad)
      message(FATAL_ERROR "${source}: a TEST_CASE name holds ';', which splits it into ctest "
                          "entries that run nothing: ${bad}")
    endif()
  endforeach()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE glassbox_catch_main ${ARG_DEPS})
  # Catch2 2.x cannot turn tags into labels, so discovery runs once per combination of the
  # two tags that the sources' TEST_CASE headers use, each with a test spec that selects
  # exactly the cases of that combination.
  set(combinations "")
  foreach(source ${ARG_SOURCES})
    file(READ ${CMAKE_CURRENT_SOURCE_DIR}/${source} text)
    string(REGEX MATCHALL "TEST_CASE\\([^{]*" headers "${text}")
    foreach(header ${headers})
      set(combination "none")
      foreach(tag model slow)
        string(FIND "${header}" "[${tag}]" at)
        if(at GREATER -1)
          string(APPEND combination "_${tag}")
        endif()
      endforeach()
      list(APPEND combinations ${combination})
    endforeach()
  endforeach()
  list(REMOVE_DUPLICATES combinations)
  foreach(combination ${combinations})
    string(REPLACE "_" ";" tags "${combination}")
    list(REMOVE_ITEM tags none)
    set(spec "~[.]")  # hidden test cases ([.tag]) stay out, as plain discovery leaves them
    foreach(tag model slow)
      if(tag IN_LIST tags)
        string(APPEND spec "[${tag}]")
      else()
        string(APPEND spec "~[${tag}]")
      endif()
    endforeach()
    # The labels travel as one list through catch_discover_tests' argument parsing and its
    # discovery script, each of which removes one level of backslashes before the ";".
    set(labels ${ARG_LABELS} ${tags})
    string(REPLACE ";" "\\\\\\\\;" labels "${labels}")
    # --warn NoTests: an entry whose name selects no test case (a name split by the build
    # tools, a test renamed since the tests were listed) fails instead of passing.
    catch_discover_tests(${name}
      TEST_SPEC "${spec}"
      EXTRA_ARGS --warn NoTests
      TEST_LIST ${name}_TESTS_${combination}
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
      PROPERTIES LABELS "${labels}")
  endforeach()
endfunction()
