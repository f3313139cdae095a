// The wall clock stepped under a running hook, as systemd-timesyncd or chrony
// step it at boot (when VMs with <autostart> start) or `date -s` does: every
// reader of the wall time in this process sees the step at once. Clocks that
// measure durations (performance.now, CLOCK_MONOTONIC) do not move.

/** Steps Date.now by `ms` (negative: back) from now on; returns what undoes every step. */
export function stepWallClock(ms: number): () => void {
  const stepped = Date.now;
  Date.now = () => stepped() + ms;
  return () => {
    Date.now = stepped;
  };
}
