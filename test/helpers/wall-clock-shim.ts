// The wall clock stepped under a whole process (the built binary, a bun
// child): an LD_PRELOAD library that adds `stepMs` to what clock_gettime
// answers for CLOCK_REALTIME once `afterMs` have passed on CLOCK_MONOTONIC,
// as NTP's step at boot or `date -s` would. The kernel's own wall clock does
// not move: a wait for an absolute wall time that the process computed from
// a reading stepped forward lasts `stepMs` longer, as a wait does on a host
// whose clock is stepped back during it. Needs gcc (as the kernel suites do).
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const SOURCE = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static long long after_ns, step_ns, loaded_ns = -1;
static int (*real)(clockid_t, struct timespec *);
static long long ns(const struct timespec *t) { return t->tv_sec * 1000000000LL + t->tv_nsec; }
__attribute__((constructor)) static void load(void) {
  struct timespec t;
  const char *spec = getenv("VMHOOK_TEST_WALL_STEP");
  real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
  if (!spec) return;
  char *end;
  after_ns = strtoll(spec, &end, 10) * 1000000LL;
  step_ns = strtoll(end + 1, 0, 10) * 1000000LL;
  real(CLOCK_MONOTONIC, &t);
  loaded_ns = ns(&t);
}
int clock_gettime(clockid_t clock, struct timespec *answer) {
  int result = real(clock, answer);
  if (result != 0 || loaded_ns < 0 || (clock != CLOCK_REALTIME && clock != CLOCK_REALTIME_COARSE)) return result;
  struct timespec t;
  real(CLOCK_MONOTONIC, &t);
  if (ns(&t) - loaded_ns < after_ns) return result;
  long long stepped = ns(answer) + step_ns;
  answer->tv_sec = stepped / 1000000000LL;
  answer->tv_nsec = stepped % 1000000000LL;
  return 0;
}
`;

let built: string | undefined;

/** The environment that steps the wall clock of a process (and its children) by `stepMs`, `afterMs` after each one starts. */
export function wallStepEnv(afterMs: number, stepMs: number): Record<string, string> {
  if (!built) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-wall-step-"));
    fs.writeFileSync(path.join(dir, "step.c"), SOURCE);
    execFileSync("gcc", ["-shared", "-fPIC", "-O2", "-o", path.join(dir, "step.so"), path.join(dir, "step.c"), "-ldl"], { stdio: "pipe" });
    built = path.join(dir, "step.so");
    process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return { LD_PRELOAD: built, VMHOOK_TEST_WALL_STEP: `${Math.round(afterMs)}:${Math.round(stepMs)}` };
}
