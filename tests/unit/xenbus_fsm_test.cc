// The xenbus backend state machine: every transition of the Linux backend
// protocol, duplicate and coalesced watch events, and hostile frontend
// state values.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <optional>
#include <string>
#include <vector>

#include "common/xenbus/backend_fsm.h"
#include "common/xenbus/state.h"

namespace xenpath {
namespace {

using S = XenbusState;
using K = FsmActionKind;

FsmAction write(S s) {
  FsmAction a;
  a.kind = K::kWriteState;
  a.state = s;
  return a;
}
FsmAction act(K k) {
  FsmAction a;
  a.kind = k;
  return a;
}
FsmAction error(int e, FsmErrorReason why) {
  FsmAction a;
  a.kind = K::kWriteError;
  a.error = e;
  a.reason = why;
  return a;
}

std::vector<FsmAction> V(const FsmActions& a) { return {a.begin(), a.end()}; }

std::string describe(const std::vector<FsmAction>& v) {
  std::string s;
  for (const auto& a : v) {
    s += std::to_string(static_cast<int>(a.kind)) + ":" + std::string(to_string(a.state)) + ":" +
         std::to_string(a.error) + " ";
  }
  return s;
}

#define EXPECT_ACTIONS(expr, ...)                                                      \
  do {                                                                                 \
    const std::vector<FsmAction> got_ = V(expr);                                       \
    const std::vector<FsmAction> want_ = {__VA_ARGS__};                                \
    EXPECT_EQ(got_, want_) << "got " << describe(got_) << " want " << describe(want_); \
  } while (0)

#define EXPECT_NO_ACTIONS(expr) EXPECT_TRUE((expr).empty()) << describe(V(expr))

// ---- state.h ----

TEST(XenbusStateTest, NamesAndValuesMatchXenbusH) {
  EXPECT_EQ(to_string(S::kUnknown), "Unknown");
  EXPECT_EQ(to_string(S::kInitialising), "Initialising");
  EXPECT_EQ(to_string(S::kInitWait), "InitWait");
  EXPECT_EQ(to_string(S::kInitialised), "Initialised");
  EXPECT_EQ(to_string(S::kConnected), "Connected");
  EXPECT_EQ(to_string(S::kClosing), "Closing");
  EXPECT_EQ(to_string(S::kClosed), "Closed");
  EXPECT_EQ(to_string(S::kReconfiguring), "Reconfiguring");
  EXPECT_EQ(to_string(S::kReconfigured), "Reconfigured");
  EXPECT_EQ(static_cast<int>(S::kInitWait), 2);
  EXPECT_EQ(static_cast<int>(S::kClosed), 6);
  for (unsigned i = 0; i <= kXenbusStateMax; ++i) {
    const auto s = static_cast<S>(i);
    EXPECT_EQ(state_value(s), std::to_string(i));
    EXPECT_EQ(parse_xenbus_state(state_value(s)), s);
  }
  EXPECT_EQ(to_string(static_cast<S>(200)), "Invalid");
  EXPECT_EQ(state_value(static_cast<S>(9)), "");
}

TEST(XenbusStateTest, ParseAcceptsOneTrailingTerminator) {
  EXPECT_EQ(parse_xenbus_state(std::string("4\0", 2)), S::kConnected);
  EXPECT_EQ(parse_xenbus_state("3\n"), S::kInitialised);
  EXPECT_EQ(parse_xenbus_state("3\n\n"), std::nullopt);
}

TEST(XenbusStateTest, ParseRejectsHostileValues) {
  for (const char* bad :
       {"", "9", "10", "-1", "+4", " 4", "4 ", "04", "0x4", "four", "4a", "a4", "99999999999999999999", "\xff", "\n"}) {
    EXPECT_EQ(parse_xenbus_state(bad), std::nullopt) << "value '" << bad << "'";
  }
  EXPECT_EQ(parse_xenbus_state(std::string("\0", 1)), std::nullopt);
  EXPECT_EQ(parse_xenbus_state(std::string("4\0garbage", 9)), std::nullopt);
}

// ---- the state machine ----

// A device probed and waiting in InitWait, online.
BackendFsm probed(bool online = true) {
  BackendFsm f(online);
  f.probed();
  return f;
}

// A device that went through a successful connect.
BackendFsm connected(bool online = true) {
  BackendFsm f = probed(online);
  (void)f.frontend_changed(S::kInitialised);
  (void)f.connect_done(0);
  return f;
}

TEST(BackendFsmTest, StartsInitialisingAndIgnoresFrontendBeforeProbe) {
  BackendFsm f;
  EXPECT_EQ(f.state(), S::kInitialising);
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialised));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kClosed));
  EXPECT_EQ(f.frontend_state(), S::kClosed);
  f.probed();
  EXPECT_EQ(f.state(), S::kInitWait);
  f.probed();  // idempotent
  EXPECT_EQ(f.state(), S::kInitWait);
}

TEST(BackendFsmTest, FrontendInitialisedConnects) {
  BackendFsm f = probed();
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialising));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialised), act(K::kConnect));
  EXPECT_TRUE(f.resources_held());
  EXPECT_ACTIONS(f.connect_done(0), write(S::kConnected));
  EXPECT_TRUE(f.connected());
  // The frontend then says Connected: nothing more to do.
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kConnected));
  EXPECT_EQ(f.state(), S::kConnected);
}

TEST(BackendFsmTest, CoalescedWatchShowingOnlyConnectedStillConnects) {
  BackendFsm f = probed();
  EXPECT_ACTIONS(f.frontend_changed(S::kConnected), act(K::kConnect));
  EXPECT_ACTIONS(f.connect_done(0), write(S::kConnected));
}

TEST(BackendFsmTest, FrontendInitWaitIsIgnored) {
  BackendFsm f = probed();
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitWait));
  EXPECT_EQ(f.state(), S::kInitWait);
}

TEST(BackendFsmTest, DuplicateConnectEventsConnectOnce) {
  BackendFsm f = probed();
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialised), act(K::kConnect));
  EXPECT_ACTIONS(f.connect_done(0), write(S::kConnected));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialised));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kConnected));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kConnected));
  // A stray completion is ignored.
  EXPECT_NO_ACTIONS(f.connect_done(0));
  EXPECT_NO_ACTIONS(f.connect_done(EIO));
  EXPECT_TRUE(f.connected());
}

TEST(BackendFsmTest, ConnectFailureWritesErrorAndCloses) {
  BackendFsm f = probed();
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialised), act(K::kConnect));
  EXPECT_ACTIONS(f.connect_done(EINVAL), act(K::kDisconnect), error(EINVAL, FsmErrorReason::kConnectFailed),
                 write(S::kClosing));
  EXPECT_FALSE(f.resources_held());
  EXPECT_TRUE(f.error_written());
  EXPECT_EQ(f.state(), S::kClosing);
  // The frontend's stale Initialised does not retry: it must restart.
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialised));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kConnected));
  // It closes, then restarts: a fresh handshake clears the error.
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kClosing));
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), write(S::kClosed));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialising), act(K::kClearError), write(S::kInitWait));
  EXPECT_FALSE(f.error_written());
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialised), act(K::kConnect));
  EXPECT_ACTIONS(f.connect_done(0), write(S::kConnected));
}

TEST(BackendFsmTest, OrderlyCloseWhileOnlineKeepsTheDevice) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosing), write(S::kClosing));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kClosing));
  EXPECT_TRUE(f.resources_held()) << "blkback keeps serving until Closed";
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), act(K::kDisconnect), write(S::kClosed));
  EXPECT_FALSE(f.destroyed());
  EXPECT_FALSE(f.resources_held());
  // Duplicates.
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kClosed));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kClosing));
  EXPECT_NO_ACTIONS(f.online_changed(true));
}

TEST(BackendFsmTest, FrontendClosedWhenOfflineDestroys) {
  BackendFsm f = connected();
  EXPECT_NO_ACTIONS(f.online_changed(false));  // libxl: online=0 then waits
  EXPECT_ACTIONS(f.frontend_changed(S::kClosing), write(S::kClosing));
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), act(K::kDisconnect), write(S::kClosed), act(K::kDestroy));
  EXPECT_TRUE(f.destroyed());
  // Everything after destruction is inert.
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kClosed));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialising));
  EXPECT_NO_ACTIONS(f.frontend_gone());
  EXPECT_NO_ACTIONS(f.backend_gone());
  EXPECT_NO_ACTIONS(f.online_changed(false));
  EXPECT_NO_ACTIONS(f.connect_done(0));
}

TEST(BackendFsmTest, OfflineAfterCloseDestroys) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), act(K::kDisconnect), write(S::kClosed));
  EXPECT_ACTIONS(f.online_changed(false), act(K::kDestroy));
  EXPECT_TRUE(f.destroyed());
  EXPECT_NO_ACTIONS(f.online_changed(false));
}

TEST(BackendFsmTest, OfflineWhileConnectedWaitsForTheFrontend) {
  BackendFsm f = connected();
  EXPECT_NO_ACTIONS(f.online_changed(false));
  EXPECT_FALSE(f.online());
  EXPECT_TRUE(f.connected());
  EXPECT_NO_ACTIONS(f.online_changed(true));
  EXPECT_TRUE(f.online());
}

TEST(BackendFsmTest, FrontendClosedBeforeConnectingGoesClosed) {
  BackendFsm f = probed();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), write(S::kClosed));
  EXPECT_FALSE(f.destroyed());
}

TEST(BackendFsmTest, ReconnectAfterClosed) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosing), write(S::kClosing));
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), act(K::kDisconnect), write(S::kClosed));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialising), write(S::kInitWait));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialising));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialised), act(K::kConnect));
  EXPECT_ACTIONS(f.connect_done(0), write(S::kConnected));
}

TEST(BackendFsmTest, FrontendRestartWhileConnectedDisconnectsThenWaits) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialising), act(K::kDisconnect), write(S::kInitWait));
  EXPECT_FALSE(f.resources_held());
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kInitialising));
  EXPECT_ACTIONS(f.frontend_changed(S::kConnected), act(K::kConnect));
  EXPECT_ACTIONS(f.connect_done(0), write(S::kConnected));
}

TEST(BackendFsmTest, FrontendRestartWhileClosing) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosing), write(S::kClosing));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialising), act(K::kDisconnect), write(S::kInitWait));
}

TEST(BackendFsmTest, FrontendRestartDuringRemovalFinishesTheRemoval) {
  BackendFsm f = connected();
  EXPECT_NO_ACTIONS(f.online_changed(false));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialising), act(K::kDisconnect), write(S::kClosed), act(K::kDestroy));
  EXPECT_TRUE(f.destroyed());
}

TEST(BackendFsmTest, FrontendGoneWhileConnected) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_gone(), act(K::kDisconnect), write(S::kClosed), act(K::kDestroy));
  EXPECT_TRUE(f.destroyed());
  EXPECT_EQ(f.frontend_state(), std::nullopt);
  EXPECT_NO_ACTIONS(f.frontend_gone());
}

TEST(BackendFsmTest, FrontendGoneBeforeConnect) {
  BackendFsm f = probed();
  EXPECT_ACTIONS(f.frontend_gone(), write(S::kClosed), act(K::kDestroy));
}

TEST(BackendFsmTest, FrontendGoneWhenAlreadyClosed) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), act(K::kDisconnect), write(S::kClosed));
  EXPECT_ACTIONS(f.frontend_gone(), act(K::kDestroy));
}

TEST(BackendFsmTest, BackendRemovedIsHotUnplug) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.backend_gone(), act(K::kDisconnect), write(S::kClosed), act(K::kDestroy));
  EXPECT_TRUE(f.destroyed());
  EXPECT_NO_ACTIONS(f.backend_gone());
  EXPECT_NO_ACTIONS(f.frontend_gone());
}

TEST(BackendFsmTest, BackendRemovedBeforeProbeJustForgets) {
  BackendFsm f;
  EXPECT_ACTIONS(f.backend_gone(), act(K::kDestroy));
}

TEST(BackendFsmTest, GarbageFrontendStateClosesWithError) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(std::nullopt), act(K::kDisconnect),
                 error(EINVAL, FsmErrorReason::kBadFrontendState), write(S::kClosing));
  EXPECT_EQ(f.state(), S::kClosing);
  // Repeating garbage (a guest hammering its node) costs nothing more.
  for (int i = 0; i < 100; ++i) EXPECT_NO_ACTIONS(f.frontend_changed(std::nullopt));
  EXPECT_NO_ACTIONS(f.frontend_changed(S::kUnknown));
  // The device is still removable and reusable.
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), write(S::kClosed));
  EXPECT_ACTIONS(f.frontend_changed(S::kInitialising), act(K::kClearError), write(S::kInitWait));
}

TEST(BackendFsmTest, GarbageBeforeConnectHasNothingToRelease) {
  BackendFsm f = probed();
  EXPECT_ACTIONS(f.frontend_changed(std::nullopt), error(EINVAL, FsmErrorReason::kBadFrontendState),
                 write(S::kClosing));
}

TEST(BackendFsmTest, ProtocolViolatingValuesAreErrors) {
  for (S bad : {S::kUnknown, S::kReconfiguring, S::kReconfigured}) {
    SCOPED_TRACE(std::string(to_string(bad)));
    BackendFsm f = connected();
    EXPECT_ACTIONS(f.frontend_changed(bad), act(K::kDisconnect), error(EINVAL, FsmErrorReason::kBadFrontendState),
                   write(S::kClosing));
  }
}

TEST(BackendFsmTest, GarbageAfterClosedIsIgnored) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), act(K::kDisconnect), write(S::kClosed));
  EXPECT_NO_ACTIONS(f.frontend_changed(std::nullopt));
  EXPECT_EQ(f.state(), S::kClosed);
}

TEST(BackendFsmTest, DeviceFailureClosesWithError) {
  BackendFsm f = connected();
  EXPECT_ACTIONS(f.device_failed(EPROTO), act(K::kDisconnect), error(EPROTO, FsmErrorReason::kDeviceFailed),
                 write(S::kClosing));
  EXPECT_NO_ACTIONS(f.device_failed(EPROTO));
  EXPECT_NO_ACTIONS(f.device_failed(EIO));
  EXPECT_ACTIONS(f.frontend_changed(S::kClosed), write(S::kClosed));
  EXPECT_NO_ACTIONS(f.device_failed(EIO));
  // Before a probe there is nothing to fail; a bogus code becomes EIO.
  BackendFsm unprobed;
  EXPECT_NO_ACTIONS(unprobed.device_failed(EIO));
  BackendFsm waiting = probed();
  EXPECT_ACTIONS(waiting.device_failed(0), error(EIO, FsmErrorReason::kDeviceFailed), write(S::kClosing));
}

TEST(BackendFsmTest, EveryInputSequenceStaysSafe) {
  // Exhaustive over short sequences of inputs: whatever the order, a
  // destroyed machine never emits again, Connect is emitted only from
  // InitWait, the device never holds resources once destroyed, and every
  // Connect is balanced by a Disconnect before destruction.
  enum In {
    kFe0,
    kFe1,
    kFe2,
    kFe3,
    kFe4,
    kFe5,
    kFe6,
    kFe7,
    kGarbage,
    kFeGone,
    kBeGone,
    kOn,
    kOff,
    kOk,
    kFail,
    kDevFail,
    kCount
  };
  const int len = 4;
  int total = 1;
  for (int i = 0; i < len; ++i) total *= kCount;
  for (int code = 0; code < total; ++code) {
    BackendFsm f;
    f.probed();
    (void)f.frontend_changed(S::kInitialised);  // connecting
    int held = 1;                               // connect emitted above
    int c = code;
    bool destroyed = false;
    for (int i = 0; i < len; ++i, c /= kCount) {
      const int in = c % kCount;
      const S before = f.state();
      FsmActions out;
      if (in <= kFe7) out = f.frontend_changed(static_cast<S>(in + 1));
      else if (in == kGarbage) out = f.frontend_changed(std::nullopt);
      else if (in == kFeGone) out = f.frontend_gone();
      else if (in == kBeGone) out = f.backend_gone();
      else if (in == kOn) out = f.online_changed(true);
      else if (in == kOff) out = f.online_changed(false);
      else if (in == kOk) out = f.connect_done(0);
      else if (in == kFail) out = f.connect_done(EIO);
      else out = f.device_failed(EPROTO);
      if (destroyed) {
        ASSERT_TRUE(out.empty());
      }
      for (const auto& a : out) {
        if (a.kind == K::kConnect) {
          ASSERT_EQ(before, S::kInitWait);
          ++held;
        }
        if (a.kind == K::kDisconnect) {
          ASSERT_GT(held, 0);
          held = 0;
        }
        if (a.kind == K::kDestroy) {
          ASSERT_EQ(held, 0) << "destroy while holding resources";
          destroyed = true;
        }
      }
      ASSERT_EQ(f.destroyed(), destroyed);
      ASSERT_EQ(f.resources_held(), held > 0);
    }
  }
}

}  // namespace
}  // namespace xenpath
