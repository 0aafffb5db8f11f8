// CoarseClock: CLOCK_MONOTONIC_COARSE as a std::chrono clock whose time
// points are steady_clock's (the same epoch: CLOCK_MONOTONIC), for the
// datapath's clock reads.
//
// Why: a PV dom0 without a stable TSC has no vDSO clock (clocksource `xen`),
// so every CLOCK_MONOTONIC read is a system call through Xen (~51 us in the
// lab, issues 13/14). The coarse clocks never read the clocksource: Linux's
// vDSO (lib/vdso/gettimeofday.c, do_coarse()) copies the timestamp the
// kernel stored at its last tick out of the vDSO data page under the
// seqcount, and falls back to the system call only for the high-resolution
// clocks (do_hres() when the clock mode has no user-readable counter). So a
// coarse read costs a few loads whatever the clocksource.
//
// The price is resolution: the value moves once per tick (one jiffy: 4 ms at
// HZ=250, Debian's) and lags CLOCK_MONOTONIC by up to one tick. Good enough
// for what the datapath times: poll windows and idle detection (bounded in
// iterations too, Reactor), busy accounting summed over many iterations
// (each iteration's share is an unbiased estimate), rate-limit windows,
// RX drain/stall and persistent-grant idle timeouts (Linux's netback and
// blkback time those in jiffies too). Not for latency measurement.
//
// Threads: any; stateless.
#pragma once

#include <time.h>

#include <chrono>

namespace xenpath {

struct CoarseClock {
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::steady_clock::time_point;
  static constexpr bool is_steady = true;

  static time_point now() noexcept {
    timespec ts{};
    (void)::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return time_point(
        std::chrono::duration_cast<duration>(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
  }
  // How far now() may lag CLOCK_MONOTONIC: one tick (clock_getres).
  static std::chrono::nanoseconds resolution() noexcept {
    timespec ts{};
    if (::clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0) return std::chrono::milliseconds(10);  // HZ=100
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  }
};

}  // namespace xenpath
