#include "blkback/blk_offload.h"

#include <pthread.h>

namespace xenpath {

BlockingOffload::BlockingOffload(unsigned threads) noexcept {
  for (unsigned i = 0; i < (threads == 0 ? 1 : threads); ++i) {
    try {
      threads_.emplace_back([this] { worker(); });
    } catch (...) {
      break;  // fewer workers; run() still works while at least one exists
    }
  }
}

BlockingOffload::~BlockingOffload() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool BlockingOffload::run(Reactor& home, std::function<int()> work, std::function<void(int)> done) noexcept {
  try {
    std::lock_guard lk(mu_);
    if (stopping_ || threads_.empty()) return false;
    jobs_.push_back(Job{&home, std::move(work), std::move(done)});
  } catch (...) {
    return false;
  }
  cv_.notify_one();
  return true;
}

void BlockingOffload::worker() noexcept {
  (void)pthread_setname_np(pthread_self(), "blk-offload");
  for (;;) {
    Job job;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, and nothing left to finish
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    const int res = job.work();
    // A stopped home reactor drops the completion: its queues are gone.
    (void)job.home->post([done = std::move(job.done), res] { done(res); });
  }
}

BlockingOffload& BlockingOffload::shared() noexcept {
  static BlockingOffload pool(1);
  return pool;
}

}  // namespace xenpath
