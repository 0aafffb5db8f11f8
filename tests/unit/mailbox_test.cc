#include "common/mailbox.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace xenpath {
namespace {

bool readable(int fd, int timeout_ms = 0) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

uint64_t read_counter(int fd) {
  uint64_t v = 0;
  EXPECT_EQ(::read(fd, &v, sizeof v), static_cast<ssize_t>(sizeof v));
  return v;
}

TEST(MailboxTest, FifoSingleProducer) {
  auto mb = Mailbox<int>::create();
  ASSERT_TRUE(mb);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE((*mb)->push(i));
  EXPECT_EQ((*mb)->size_approx(), 100u);
  std::vector<int> got;
  EXPECT_EQ((*mb)->drain([&](int&& v) { got.push_back(v); }, 30), 30u) << "max respected";
  EXPECT_FALSE((*mb)->empty());
  EXPECT_EQ((*mb)->drain([&](int&& v) { got.push_back(v); }, 1000), 70u);
  EXPECT_TRUE((*mb)->empty());
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(got[i], i);
  EXPECT_EQ((*mb)->drain([&](int&&) { ADD_FAILURE(); }, 10), 0u);
}

TEST(MailboxTest, WakesOnlyOnTransitionFromEmpty) {
  auto mbr = Mailbox<int>::create();
  ASSERT_TRUE(mbr);
  Mailbox<int>& mb = **mbr;
  EXPECT_FALSE(readable(mb.fd()));
  ASSERT_TRUE(mb.push(1));
  ASSERT_TRUE(readable(mb.fd())) << "push to an empty mailbox wakes the consumer";
  ASSERT_TRUE(mb.push(2));
  ASSERT_TRUE(mb.push(3));
  EXPECT_EQ(read_counter(mb.fd()), 1u) << "one wake-up for the 0 -> 1 transition only";
  EXPECT_FALSE(readable(mb.fd()));
  // Not empty: a push does not wake again (the consumer must not sleep).
  ASSERT_TRUE(mb.push(4));
  EXPECT_FALSE(readable(mb.fd()));
  EXPECT_FALSE(mb.empty());
  EXPECT_EQ(mb.drain([](int&&) {}, 100), 4u);
  EXPECT_TRUE(mb.empty());
  // Empty again: the next push wakes.
  ASSERT_TRUE(mb.push(5));
  EXPECT_TRUE(readable(mb.fd()));
  mb.clear_wakeup();
  EXPECT_FALSE(readable(mb.fd()));
  // wake() without a message.
  mb.wake();
  EXPECT_TRUE(readable(mb.fd()));
}

TEST(MailboxTest, CloseRefusesAndDiscardDestroys) {
  auto mbr = Mailbox<std::unique_ptr<int>>::create();
  ASSERT_TRUE(mbr);
  auto& mb = **mbr;
  ASSERT_TRUE(mb.push(std::make_unique<int>(1)));
  ASSERT_TRUE(mb.push(std::make_unique<int>(2)));
  mb.close();
  EXPECT_TRUE(mb.closed());
  EXPECT_FALSE(mb.push(std::make_unique<int>(3)));
  // Everything accepted before close() is still there.
  std::vector<int> got;
  EXPECT_EQ(mb.drain([&](std::unique_ptr<int>&& p) { got.push_back(*p); }, 1), 1u);
  EXPECT_EQ(mb.discard(), 1u);
  EXPECT_EQ(got, std::vector<int>{1});
  EXPECT_TRUE(mb.empty());
}

TEST(MailboxTest, DestructorFreesUndrainedMessages) {
  // Checked by LeakSanitizer in the sanitizer build.
  auto mbr = Mailbox<std::unique_ptr<std::vector<int>>>::create();
  ASSERT_TRUE(mbr);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE((*mbr)->push(std::make_unique<std::vector<int>>(100, i)));
  (*mbr)->drain([](auto&&) {}, 3);
}

// Several producers, one consumer sleeping in poll() on the eventfd
// whenever it sees the mailbox empty. Every message arrives, in order per
// producer, and the consumer is never left asleep with messages queued: a
// lost wake-up shows as a poll() timeout.
TEST(MailboxTest, ManyProducersOrderedAndNoLostWakeups) {
  constexpr uint32_t kProducers = 4;
  constexpr uint32_t kPerProducer = 20000;
  auto mbr = Mailbox<uint64_t>::create();
  ASSERT_TRUE(mbr);
  auto& mb = **mbr;

  std::atomic<bool> go{false};
  std::vector<std::thread> producers;
  for (uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (uint32_t i = 0; i < kPerProducer; ++i) {
        while (!mb.push((uint64_t{p} << 32) | i)) {
        }
        // Bursts with gaps so the consumer drains to empty and sleeps often.
        if (i % 64 == 63) std::this_thread::yield();
      }
    });
  }

  std::vector<uint32_t> next(kProducers, 0);
  uint64_t received = 0, sleeps = 0, lost = 0, misordered = 0;
  go.store(true, std::memory_order_release);
  while (received < uint64_t{kProducers} * kPerProducer) {
    mb.drain(
        [&](uint64_t&& v) {
          const uint32_t p = static_cast<uint32_t>(v >> 32);
          const uint32_t i = static_cast<uint32_t>(v);
          if (p >= kProducers || next[p] != i) ++misordered;
          if (p < kProducers) next[p] = i + 1;
          ++received;
        },
        256);
    if (received < uint64_t{kProducers} * kPerProducer && mb.empty()) {
      ++sleeps;
      if (!readable(mb.fd(), 5000)) {
        ++lost;
        break;
      }
      mb.clear_wakeup();
    }
  }
  for (auto& t : producers) t.join();
  EXPECT_EQ(lost, 0u) << "consumer slept with messages queued";
  EXPECT_EQ(misordered, 0u);
  EXPECT_EQ(received, uint64_t{kProducers} * kPerProducer);
  for (uint32_t p = 0; p < kProducers; ++p) EXPECT_EQ(next[p], kPerProducer);
  EXPECT_GT(sleeps, 0u);
  EXPECT_TRUE(mb.empty());
}

}  // namespace
}  // namespace xenpath
