// Simulated event channels: Xen's binding rules and the Linux evtchn
// device's mask-until-unmask semantics, on eventfds.
#include "sim/sim_event_channel.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <atomic>
#include <thread>

#include "sim/sim_hypervisor.h"

namespace xenpath::sim {
namespace {

constexpr DomId kFront = 5;
constexpr DomId kOther = 7;

bool readable(int fd, int timeout_ms = 0) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

// The next pending port, or 0 (never a valid port) when there is none.
EvtchnPort next_port(EventChannel& ec) {
  auto p = ec.pending();
  return p ? *p : 0;
}

class SimEventChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(hv_.create_domain(kFront, 4, "frontend"));
    auto fe = hv_.open_event_channel(kFront);
    auto be = hv_.open_event_channel(kDom0);
    ASSERT_TRUE(fe);
    ASSERT_TRUE(be);
    fe_ = std::move(*fe);
    be_ = std::move(*be);
  }

  // The usual handshake: the frontend offers an unbound port to dom0, the
  // backend binds it and consumes the event Xen leaves on a fresh binding.
  void connect() {
    auto fp = fe_->bind_unbound(kDom0);
    ASSERT_TRUE(fp) << error_string(fp.error());
    fport_ = *fp;
    auto bp = be_->bind_interdomain(kFront, fport_);
    ASSERT_TRUE(bp) << error_string(bp.error());
    bport_ = *bp;
    auto first = be_->pending();
    ASSERT_TRUE(first);
    ASSERT_EQ(*first, bport_);
    ASSERT_TRUE(be_->unmask(bport_));
    ASSERT_FALSE(readable(be_->fd()));
  }

  SimHypervisor hv_;
  std::unique_ptr<EventChannel> fe_;
  std::unique_ptr<EventChannel> be_;
  EvtchnPort fport_ = 0;
  EvtchnPort bport_ = 0;
};

TEST_F(SimEventChannelTest, BindAndNotifyBothWays) {
  connect();
  EXPECT_EQ(hv_.evtchn_status(kFront, fport_).state, EvtchnStatus::State::kInterdomain);
  EXPECT_EQ(hv_.evtchn_status(kFront, fport_).remote_dom, kDom0);
  EXPECT_EQ(hv_.evtchn_status(kFront, fport_).remote_port, bport_);
  EXPECT_EQ(hv_.evtchn_status(kDom0, bport_).remote_port, fport_);

  ASSERT_TRUE(fe_->notify(fport_));
  auto p = be_->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, bport_);
  EXPECT_EQ(be_->pending().error(), EAGAIN);
  EXPECT_EQ(fe_->pending().error(), EAGAIN);  // the sender hears nothing

  ASSERT_TRUE(be_->notify(bport_));
  p = fe_->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, fport_);
}

TEST_F(SimEventChannelTest, PortsArePerDomainFromOne) {
  auto a = fe_->bind_unbound(kDom0);
  auto b = be_->bind_unbound(kFront);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(*a, 1u);
  EXPECT_EQ(*b, 1u);
  auto c = fe_->bind_unbound(kDom0);
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, 2u);
  ASSERT_TRUE(fe_->unbind(*a));
  auto d = fe_->bind_unbound(kDom0);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 1u);  // lowest free port again
}

TEST_F(SimEventChannelTest, FdIsReadableExactlyWhileSomethingIsPending) {
  connect();
  EXPECT_FALSE(readable(be_->fd()));
  ASSERT_TRUE(fe_->notify(fport_));
  EXPECT_TRUE(readable(be_->fd()));
  EXPECT_TRUE(readable(be_->fd()));  // level, not edge
  ASSERT_TRUE(be_->pending());
  EXPECT_FALSE(readable(be_->fd()));
}

TEST_F(SimEventChannelTest, FiredPortStaysMaskedAndLatchesUntilUnmask) {
  connect();
  ASSERT_TRUE(fe_->notify(fport_));
  ASSERT_TRUE(fe_->notify(fport_));
  ASSERT_TRUE(fe_->notify(fport_));
  auto p = be_->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, bport_);
  // Masked: the later notifies are latched, not queued.
  EXPECT_EQ(be_->pending().error(), EAGAIN);
  EXPECT_FALSE(readable(be_->fd()));
  ASSERT_TRUE(be_->unmask(bport_));
  // The latched event is delivered once (the pending bit is one bit).
  EXPECT_TRUE(readable(be_->fd()));
  p = be_->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, bport_);
  EXPECT_EQ(be_->pending().error(), EAGAIN);
  // Still masked after that delivery; unmasking with nothing latched queues
  // nothing, and the next notify gets through.
  ASSERT_TRUE(be_->unmask(bport_));
  EXPECT_FALSE(readable(be_->fd()));
  ASSERT_TRUE(fe_->notify(fport_));
  p = be_->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, bport_);
}

TEST_F(SimEventChannelTest, EventsOfSeveralPortsComeOutInOrder) {
  connect();
  auto fp2 = fe_->bind_unbound(kDom0);
  ASSERT_TRUE(fp2);
  auto bp2 = be_->bind_interdomain(kFront, *fp2);
  ASSERT_TRUE(bp2);
  auto own = be_->pending();  // the binding's own event
  ASSERT_TRUE(own);
  ASSERT_EQ(*own, *bp2);
  ASSERT_TRUE(be_->unmask(*bp2));
  ASSERT_TRUE(fe_->notify(*fp2));
  ASSERT_TRUE(fe_->notify(fport_));
  EXPECT_EQ(next_port(*be_), *bp2);
  EXPECT_EQ(next_port(*be_), bport_);
  EXPECT_EQ(be_->pending().error(), EAGAIN);
}

TEST_F(SimEventChannelTest, NotifyBeforeTheBackendBindsIsDroppedButBindLeavesAnEvent) {
  auto fp = fe_->bind_unbound(kDom0);
  ASSERT_TRUE(fp);
  EXPECT_EQ(hv_.evtchn_status(kFront, *fp).state, EvtchnStatus::State::kUnbound);
  EXPECT_EQ(hv_.evtchn_status(kFront, *fp).remote_dom, kDom0);
  ASSERT_TRUE(fe_->notify(*fp));  // nobody there: dropped
  auto bp = be_->bind_interdomain(kFront, *fp);
  ASSERT_TRUE(bp);
  EXPECT_TRUE(readable(be_->fd()));
  EXPECT_EQ(next_port(*be_), *bp);
  EXPECT_EQ(be_->pending().error(), EAGAIN);
}

TEST_F(SimEventChannelTest, BindingIsRefusedAsXenRefusesIt) {
  ASSERT_TRUE(hv_.create_domain(kOther, 4, "other"));
  auto other = hv_.open_event_channel(kOther);
  ASSERT_TRUE(other);
  auto fp = fe_->bind_unbound(kDom0);
  ASSERT_TRUE(fp);
  // Reserved for dom0: domain 7 may not take it.
  EXPECT_EQ((*other)->bind_interdomain(kFront, *fp).error(), EINVAL);
  // No such port, port 0, and the frontend's own allocation count as bad ports.
  EXPECT_EQ(be_->bind_interdomain(kFront, 77).error(), EINVAL);
  EXPECT_EQ(be_->bind_interdomain(kFront, 0).error(), EINVAL);
  // No such domain.
  EXPECT_EQ(be_->bind_interdomain(42, 1).error(), ESRCH);
  // Once bound, the port is no longer unbound: nobody can bind it again.
  auto bp = be_->bind_interdomain(kFront, *fp);
  ASSERT_TRUE(bp);
  EXPECT_EQ(be_->bind_interdomain(kFront, *fp).error(), EINVAL);
  EXPECT_EQ(hv_.open_event_channel(42).error(), ESRCH);
}

TEST_F(SimEventChannelTest, HandlesOnlyUseTheirOwnPorts) {
  connect();
  auto other_be = hv_.open_event_channel(kDom0);
  ASSERT_TRUE(other_be);
  // Same domain, other handle: the device says ENOTCONN.
  EXPECT_EQ((*other_be)->notify(bport_).error(), ENOTCONN);
  EXPECT_EQ((*other_be)->unbind(bport_).error(), ENOTCONN);
  EXPECT_TRUE((*other_be)->unmask(bport_));  // ignored, as a write() to the device is
  EXPECT_EQ(be_->notify(999).error(), ENOTCONN);
  EXPECT_EQ(be_->unbind(SimPortTable::kMaxPorts).error(), EINVAL);
}

TEST_F(SimEventChannelTest, UnbindClosesThePortAndThePeerSeesIt) {
  connect();
  ASSERT_TRUE(be_->unbind(bport_));
  EXPECT_EQ(hv_.evtchn_status(kDom0, bport_).state, EvtchnStatus::State::kClosed);
  // The frontend's port is unbound again, reserved for dom0, as in Xen.
  const EvtchnStatus fs = hv_.evtchn_status(kFront, fport_);
  EXPECT_EQ(fs.state, EvtchnStatus::State::kUnbound);
  EXPECT_EQ(fs.remote_dom, kDom0);
  // Its notifies go nowhere now, and the backend cannot use the old port.
  ASSERT_TRUE(fe_->notify(fport_));
  EXPECT_EQ(be_->pending().error(), EAGAIN);
  EXPECT_FALSE(readable(be_->fd()));
  EXPECT_EQ(be_->notify(bport_).error(), ENOTCONN);
  EXPECT_EQ(be_->unbind(bport_).error(), ENOTCONN);
  // A backend can reconnect to the same frontend port.
  auto again = be_->bind_interdomain(kFront, fport_);
  ASSERT_TRUE(again);
  EXPECT_EQ(next_port(*be_), *again);
}

TEST_F(SimEventChannelTest, ClosingAHandleUnbindsItsPorts) {
  connect();
  be_.reset();
  EXPECT_EQ(hv_.evtchn_status(kDom0, bport_).state, EvtchnStatus::State::kClosed);
  EXPECT_EQ(hv_.evtchn_status(kFront, fport_).state, EvtchnStatus::State::kUnbound);
  EXPECT_TRUE(fe_->notify(fport_));
}

TEST_F(SimEventChannelTest, DestroyingTheFrontendDomainClosesItsPorts) {
  connect();
  ASSERT_TRUE(hv_.destroy_domain(kFront));
  // The backend's port stays until it unbinds it, unbound and pointing at
  // the dead domain; its notifies are dropped.
  const EvtchnStatus bs = hv_.evtchn_status(kDom0, bport_);
  EXPECT_EQ(bs.state, EvtchnStatus::State::kUnbound);
  EXPECT_EQ(bs.remote_dom, kFront);
  EXPECT_TRUE(be_->notify(bport_));
  EXPECT_EQ(fe_->pending().error(), EAGAIN);
  // The dead domain's own handle has nothing left.
  EXPECT_EQ(fe_->notify(fport_).error(), ENOTCONN);
  EXPECT_EQ(fe_->bind_unbound(kDom0).error(), ESRCH);
  EXPECT_EQ(be_->bind_interdomain(kFront, fport_).error(), ESRCH);
  EXPECT_TRUE(be_->unbind(bport_));
}

TEST_F(SimEventChannelTest, NotifyCallsAreCounted) {
  connect();
  const uint64_t before = hv_.counters().notify_calls.load();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(fe_->notify(fport_));
  ASSERT_TRUE(be_->notify(bport_));
  EXPECT_FALSE(be_->notify(12345));  // refused: not a notify
  EXPECT_EQ(hv_.counters().notify_calls.load() - before, 6u);
}

TEST_F(SimEventChannelTest, LoopbackWithinOneDomain) {
  auto other = hv_.open_event_channel(kDom0);
  ASSERT_TRUE(other);
  auto a = be_->bind_unbound(kDom0);
  ASSERT_TRUE(a);
  auto b = (*other)->bind_interdomain(kDom0, *a);
  ASSERT_TRUE(b);
  auto first = (*other)->pending();
  ASSERT_TRUE(first);
  ASSERT_EQ(*first, *b);
  ASSERT_TRUE((*other)->unmask(*b));
  ASSERT_TRUE(be_->notify(*a));
  auto p = (*other)->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, *b);
  ASSERT_TRUE((*other)->notify(*b));
  p = be_->pending();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, *a);
}

// A frontend thread and a backend thread ping-pong through the channel,
// each blocking in poll() on its own fd, re-arming with unmask as a reactor
// does. Every round trip must arrive: no lost or duplicated wake-ups.
TEST_F(SimEventChannelTest, CrossThreadPingPong) {
  connect();
  constexpr int kRounds = 2000;
  std::atomic<int> backend_seen{0};
  std::thread backend([&] {
    for (int i = 0; i < kRounds; ++i) {
      if (!readable(be_->fd(), 5000)) {
        ADD_FAILURE() << "backend starved at round " << i;
        return;
      }
      auto p = be_->pending();
      if (!p || *p != bport_ || !be_->unmask(bport_)) {
        ADD_FAILURE() << "backend: bad event at round " << i;
        return;
      }
      backend_seen.fetch_add(1);
      if (!be_->notify(bport_)) {
        ADD_FAILURE() << "backend notify failed";
        return;
      }
    }
  });
  int frontend_seen = 0;
  for (int i = 0; i < kRounds; ++i) {
    if (!fe_->notify(fport_) || !readable(fe_->fd(), 5000)) {
      ADD_FAILURE() << "frontend starved at round " << i;
      break;
    }
    auto p = fe_->pending();
    if (!p || *p != fport_ || !fe_->unmask(fport_)) {
      ADD_FAILURE() << "frontend: bad event at round " << i;
      break;
    }
    ++frontend_seen;
  }
  backend.join();
  EXPECT_EQ(backend_seen.load(), kRounds);
  EXPECT_EQ(frontend_seen, kRounds);
  EXPECT_EQ(be_->pending().error(), EAGAIN);
  EXPECT_EQ(fe_->pending().error(), EAGAIN);
}

// Bursts of notifies from another thread while the backend drains and
// re-arms: events coalesce, but the backend always wakes up after the last
// one (it observes the frontend's final sequence number).
TEST_F(SimEventChannelTest, CrossThreadBurstsNeverLoseTheLastEvent) {
  connect();
  constexpr uint32_t kNotifies = 5000;
  std::atomic<uint32_t> seq{0};
  std::atomic<bool> done{false};
  std::thread frontend([&] {
    for (uint32_t i = 1; i <= kNotifies; ++i) {
      seq.store(i, std::memory_order_release);
      if (!fe_->notify(fport_)) ADD_FAILURE() << "notify " << i;
    }
    done.store(true, std::memory_order_release);
  });
  uint32_t events = 0;
  uint32_t observed = 0;
  for (;;) {
    const bool finished = done.load(std::memory_order_acquire);
    if (readable(be_->fd(), finished ? 0 : 50)) {
      auto p = be_->pending();
      if (!p || *p != bport_) {
        ADD_FAILURE() << "bad event";
        break;
      }
      ++events;
      observed = seq.load(std::memory_order_acquire);
      (void)be_->unmask(bport_);
      continue;
    }
    if (finished) break;
  }
  frontend.join();
  EXPECT_EQ(observed, kNotifies);
  EXPECT_GE(events, 1u);
  EXPECT_LE(events, kNotifies);
  EXPECT_FALSE(readable(be_->fd()));
}

}  // namespace
}  // namespace xenpath::sim
