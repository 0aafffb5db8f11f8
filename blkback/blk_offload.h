// BlockingOffload: runs the few image operations that have no io_uring form
// on this kernel generation (BLKDISCARD / BLKSECDISCARD ioctls on block
// devices) on a small thread pool, so a long discard never stalls a reactor
// and the other queues on it. The result goes back to the submitting
// reactor through its mailbox.
//
// Thread-safe. Worker threads touch no guest memory (discard carries no
// data). Control-rate work: it allocates per job.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "common/reactor.h"
#include "common/result.h"

namespace xenpath {

class BlockingOffload {
 public:
  explicit BlockingOffload(unsigned threads = 1) noexcept;
  ~BlockingOffload();
  BlockingOffload(const BlockingOffload&) = delete;
  BlockingOffload& operator=(const BlockingOffload&) = delete;

  // Runs `work` on a worker, then `done(result)` on `home`'s thread. False
  // (nothing will run) when out of memory or shutting down.
  bool run(Reactor& home, std::function<int()> work, std::function<void(int)> done) noexcept;

  // The process-wide pool blkback uses unless told otherwise.
  static BlockingOffload& shared() noexcept;

 private:
  struct Job {
    Reactor* home;
    std::function<int()> work;
    std::function<void(int)> done;
  };
  void worker() noexcept;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace xenpath
