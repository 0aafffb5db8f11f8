// Pins the calling thread to one CPU: the benchmark's and the tap guest's
// own threads, and every reactor's (Reactor::Options::cpu).
//
// Threads: acts on the calling thread only. No guest memory.
#pragma once

#include <pthread.h>
#include <sched.h>

#include "common/result.h"

namespace xenpath {

// cpu < 0: leave the thread where it is. Errors: EINVAL beyond CPU_SETSIZE,
// else what pthread_setaffinity_np returns.
inline Status pin_current_thread(int cpu) noexcept {
  if (cpu < 0) return ok();
  if (cpu >= CPU_SETSIZE) return unexpected(EINVAL);
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  const int r = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  if (r != 0) return unexpected(r);
  return ok();
}

}  // namespace xenpath
