/* fuzz_lua.c: a libFuzzer target over one Lua parser of sluice: built once per target name
 * (FUZZ_TARGET = "sse", "json", "jsonl", "feed", "reply", "config"), each calling
 * T[FUZZ_TARGET](data) of tests/fuzz/targets.lua. See harness.h for the coverage and the verdict.
 */
#include "harness.h"

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET must name a function of tests/fuzz/targets.lua"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_setup();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_run_lua(FUZZ_TARGET, data, size);
  return 0;
}
