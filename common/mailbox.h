// Mailbox<T>: many producers, one consumer, plus an eventfd the consumer's
// reactor watches.
//
// Thread: push() from any thread; drain(), clear_wakeup(), empty() on the
// consumer thread only; close() on the consumer thread (or when no consumer
// runs). No guest memory.
//
// Why an unbounded Vyukov MPSC list rather than a bounded ring: what goes
// through a mailbox are control messages and cross-reactor work (attach a
// device, a cache fill finished, stop) that must never be dropped or make
// the sender wait; a bounded ring would need a "full" policy for each of
// them. The list's push is wait-free (a fixed handful of atomic operations,
// no retry loop: the link itself is one exchange and one store), and the
// single consumer needs no CAS loop and has no ABA problem. The cost is one
// allocation per message (a std::function task usually allocates anyway)
// and a short window in which a producer has swung the head but not yet
// linked its node: the consumer then sees a gap, stops, and sees the message
// on its next pass (empty() stays false meanwhile, so it does not sleep).
//
// Wake-ups: `pending_` counts accepted, not yet consumed messages; a
// producer increments it before linking its message, the consumer decrements
// after taking one. A producer whose increment takes pending_ from 0 to 1
// writes the eventfd after linking; other producers do not (the consumer is
// awake or about to be). The consumer sleeps only after seeing empty()
// (pending_ == 0): a message accepted before that check keeps it awake
// (spinning over a not-yet-linked one), and the first message accepted after
// it makes the 0 -> 1 transition and writes the eventfd, so no wake-up is
// lost. The consumer clears the eventfd when its poller reports it readable
// (clear_wakeup()), before draining; a write racing with the clear at worst
// causes one spurious wake.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

#include "common/result.h"

namespace xenpath {

template <typename T>
class Mailbox {
  static_assert(std::is_nothrow_move_constructible_v<T>, "Mailbox<T> moves T in noexcept code");

 public:
  static Result<std::unique_ptr<Mailbox>> create() noexcept {
    const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return unexpected_errno();
    std::unique_ptr<Mailbox> mb(new (std::nothrow) Mailbox(fd));
    if (!mb) {
      ::close(fd);
      return unexpected(ENOMEM);
    }
    return mb;
  }

  // No producer may still be pushing (close() first when in doubt).
  ~Mailbox() {
    discard();
    if (tail_ != &stub_) delete tail_;
    ::close(efd_);
  }
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // Any thread. False (and `v` is destroyed) once closed or out of memory.
  bool push(T v) noexcept {
    // Dekker pair with close(): either close() sees our in-flight mark and
    // waits for the link, or we see closed_ and back out.
    pushers_.fetch_add(1, std::memory_order_seq_cst);
    if (closed_.load(std::memory_order_seq_cst)) {
      pushers_.fetch_sub(1, std::memory_order_release);
      return false;
    }
    Node* n = new (std::nothrow) Node(std::move(v));
    if (n == nullptr) {
      pushers_.fetch_sub(1, std::memory_order_release);
      return false;
    }
    // Counted before it is linked, so pending_ never drops below the number
    // of reachable messages (the consumer decrements only after a pop).
    const bool was_empty = pending_.fetch_add(1, std::memory_order_acq_rel) == 0;
    Node* prev = head_.exchange(n, std::memory_order_acq_rel);
    // The consumer reaches `n` through prev->next; until this store it sees
    // a gap (see the class comment).
    prev->next.store(n, std::memory_order_release);
    // Woken only once the message is reachable: the consumer then finds it.
    if (was_empty) wake();
    pushers_.fetch_sub(1, std::memory_order_release);
    return true;
  }

  // Consumer thread: takes up to `max` messages in FIFO order (per producer;
  // messages of different producers interleave in link order) and calls
  // f(T&&) on each. Returns how many.
  template <typename F>
  size_t drain(F&& f, size_t max) noexcept {
    size_t done = 0;
    while (done < max) {
      Node* next = tail_->next.load(std::memory_order_acquire);
      if (next == nullptr) break;  // empty, or a producer has not linked yet
      Node* old = tail_;
      tail_ = next;
      // `next` becomes the new stub: its value is moved out, the node stays
      // until the following pop.
      T v = std::move(*next->value);
      next->value.reset();
      if (old != &stub_) delete old;
      pending_.fetch_sub(1, std::memory_order_acq_rel);
      ++done;
      f(std::move(v));
    }
    return done;
  }

  // Consumer thread: no message accepted and not yet consumed. False also
  // while a producer is between its increment and its link: the consumer
  // must not sleep then (drain() finds the message once it is linked).
  [[nodiscard]] bool empty() const noexcept { return pending_.load(std::memory_order_acquire) == 0; }
  [[nodiscard]] size_t size_approx() const noexcept { return pending_.load(std::memory_order_relaxed); }

  // The eventfd to watch for readability.
  [[nodiscard]] int fd() const noexcept { return efd_; }
  // Consumer thread: reset the eventfd after it was reported readable.
  void clear_wakeup() noexcept {
    uint64_t v;
    while (::read(efd_, &v, sizeof v) < 0 && errno == EINTR) {
    }
  }
  // Any thread: make the eventfd readable (wakes the consumer's reactor
  // without a message, e.g. to notice a stop request).
  void wake() noexcept {
    const uint64_t one = 1;
    while (::write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  // Refuses further pushes and waits for pushes already past the check to
  // link their message; afterwards drain() sees everything ever accepted.
  void close() noexcept {
    closed_.store(true, std::memory_order_seq_cst);
    while (pushers_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }
  [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  // Consumer thread (or after close()): destroys every linked message
  // without running it. Returns how many.
  size_t discard() noexcept {
    return drain([](T&&) {}, SIZE_MAX);
  }

 private:
  struct Node {
    Node() noexcept = default;
    explicit Node(T&& v) noexcept : value(std::in_place, std::move(v)) {}
    std::atomic<Node*> next{nullptr};
    std::optional<T> value;
  };

  explicit Mailbox(int efd) noexcept : efd_(efd) {}

  // Producers swing head_; the consumer owns tail_. Separate cache lines so
  // producers do not bounce the consumer's line on every push.
  alignas(64) std::atomic<Node*> head_{&stub_};
  alignas(64) Node* tail_ = &stub_;
  alignas(64) std::atomic<size_t> pending_{0};
  std::atomic<size_t> pushers_{0};
  std::atomic<bool> closed_{false};
  Node stub_;
  int efd_;
};

}  // namespace xenpath
