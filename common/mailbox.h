// Mailbox<T>: many producers, one consumer (a reactor), plus an eventfd the
// consumer's epoll watches.
//
// Producers take a short mutex to append to a vector; the consumer swaps the
// whole vector out under the same mutex and runs the items unlocked. This is
// control-plane traffic (connect/disconnect, stats requests), a few items per
// second, so a lock-free queue would buy nothing; what matters is that no
// datapath state is ever shared between threads — it is handed over here.
//
// Lost wake-ups: a producer writes the eventfd only when it turns the queue
// from empty to non-empty; the consumer resets the eventfd BEFORE swapping the
// queue out, so an item pushed after the swap finds the queue empty and
// writes the eventfd again.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "common/result.h"

namespace xenpath {

template <typename T>
class Mailbox {
 public:
  Mailbox() noexcept : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~Mailbox() {
    if (fd_ >= 0) close(fd_);
  }
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
  [[nodiscard]] int fd() const noexcept { return fd_; }

  // Any thread. False once closed.
  bool push(T item) noexcept {
    bool wake = false;
    {
      std::lock_guard lock(mu_);
      if (closed_) return false;
      wake = items_.empty();
      items_.push_back(std::move(item));
    }
    if (wake) {
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t w = write(fd_, &one, sizeof(one));
    }
    return true;
  }

  // Consumer thread. Runs f on at most `max` items in push order (per
  // producer); leftovers stay queued and the eventfd stays readable.
  template <typename F>
  size_t drain(F&& f, size_t max = SIZE_MAX) noexcept {
    uint64_t v;
    [[maybe_unused]] ssize_t r = read(fd_, &v, sizeof(v));
    {
      std::lock_guard lock(mu_);
      if (items_.empty()) return 0;
      batch_.swap(items_);
    }
    size_t n = 0;
    for (; n < batch_.size() && n < max; ++n) f(batch_[n]);
    if (n < batch_.size()) {
      std::lock_guard lock(mu_);
      // Put the rest back in front of anything pushed meanwhile.
      items_.insert(items_.begin(), std::make_move_iterator(batch_.begin() + static_cast<ptrdiff_t>(n)),
                    std::make_move_iterator(batch_.end()));
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t w = write(fd_, &one, sizeof(one));
    }
    batch_.clear();
    return n;
  }

  [[nodiscard]] bool empty() const noexcept {
    std::lock_guard lock(mu_);
    return items_.empty();
  }

  // Refuses further pushes; returns what was still queued.
  std::vector<T> close_and_take() noexcept {
    std::lock_guard lock(mu_);
    closed_ = true;
    return std::exchange(items_, {});
  }

 private:
  mutable std::mutex mu_;
  std::vector<T> items_;
  std::vector<T> batch_;  // consumer only
  bool closed_ = false;
  int fd_;
};

}  // namespace xenpath
