// Every model family the engine knows: one line each (see engine/family.h for how to add one).
#include "engine/family.h"

namespace glassbox {

FamilyEntry LlamaFamily();  // families/llama.cc: Llama, Mistral
FamilyEntry QwenFamily();   // families/qwen.cc: Qwen2, Qwen2.5, Qwen3
FamilyEntry Gpt2Family();   // families/gpt2.cc: GPT-2
FamilyEntry NeoxFamily();   // families/neox.cc: GPT-NeoX, Pythia
FamilyEntry GemmaFamily();  // families/gemma.cc: Gemma 2, Gemma 3

const std::vector<FamilyEntry>& Families() {
  static const std::vector<FamilyEntry> kFamilies = {
      LlamaFamily(),
      QwenFamily(),
      Gpt2Family(),
      NeoxFamily(),
      GemmaFamily(),
  };
  return kFamilies;
}

}  // namespace glassbox
