// BackendFsm: the xenbus lifecycle of ONE backend device as a pure state
// machine. It performs no I/O: each input returns the short list of actions
// the driver must carry out, in order. The behaviour is that of the Linux
// backends (xen-blkback/xenbus.c frontend_changed, xenbus_probe_backend.c)
// and libxl's device add/remove protocol:
//
//   probe (driver wrote InitWait)          -> InitWait
//   frontend Initialised/Connected         -> [disconnect if anything is held] connect;
//                                             connect_done(0) -> Connected,
//                                             connect_done(err) -> error node, Closing
//   frontend Closing                        -> Closing
//   frontend Closed                         -> disconnect, Closed; destroy when offline
//   frontend Initialising after Closed/Closing/Connected (resume, kexec,
//     migration)                            -> disconnect, InitWait (reconnect);
//                                             when offline: Closed + destroy instead
//   frontend state node gone (guest died, toolstack rm)
//                                           -> disconnect, Closed (if the node is
//                                              still there), destroy
//   backend node removed (hot-unplug)       -> disconnect, Closed (if writable), destroy
//   online := 0 while Closed                -> destroy
//   a value the protocol does not allow (garbage, Unknown, Reconfiguring...)
//                                           -> disconnect, error node, Closing
//   the device reports a fatal error        -> disconnect, error node, Closing
//
// Every input is idempotent: xenstore watches fire repeatedly and may
// coalesce, so a duplicate event yields no action and a missed intermediate
// frontend state (Initialised seen only as Connected) still connects.
//
// Thread ownership: owned by the driver's control thread, like its device.
// It touches no guest memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "common/xenbus/state.h"

namespace xenpath {

enum class FsmActionKind : uint8_t {
  kWriteState,  // write `state` to <backend>/state (only if the node still exists)
  kWriteError,  // write <backend>/error: "<error> <why>"
  kClearError,  // remove <backend>/error (a fresh handshake starts)
  kConnect,     // read the frontend's keys, device connect(); report connect_done()
  kDisconnect,  // device disconnect(): release every mapping and channel
  kDestroy,     // release everything, drop watches, forget the device
};

// Why an error node is written (the driver turns it into the message).
enum class FsmErrorReason : uint8_t {
  kNone,
  kBadFrontendState,  // the frontend published a state the protocol does not allow
  kConnectFailed,     // reading the frontend's keys or connect() failed
  kDeviceFailed,      // the connected device gave up (e.g. a ring overrun halted a queue)
};

struct FsmAction {
  FsmActionKind kind = FsmActionKind::kWriteState;
  XenbusState state = XenbusState::kUnknown;  // kWriteState
  int error = 0;                              // kWriteError: positive errno
  FsmErrorReason reason = FsmErrorReason::kNone;

  friend bool operator==(const FsmAction&, const FsmAction&) = default;
};

// At most four actions result from one input; a fixed array keeps the state
// machine allocation-free.
class FsmActions {
 public:
  static constexpr size_t kCapacity = 4;

  void push(const FsmAction& a) noexcept {
    if (size_ < kCapacity) items_[size_++] = a;
  }
  [[nodiscard]] size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] const FsmAction& operator[](size_t i) const noexcept { return items_[i]; }
  [[nodiscard]] const FsmAction* begin() const noexcept { return items_.data(); }
  [[nodiscard]] const FsmAction* end() const noexcept { return items_.data() + size_; }

 private:
  std::array<FsmAction, kCapacity> items_{};
  size_t size_ = 0;
};

class BackendFsm {
 public:
  // `online`: the toolstack's <backend>/online as read at probe time.
  explicit BackendFsm(bool online = true) noexcept : online_(online) {}

  // The probe transaction wrote InitWait (after the device's features and
  // hotplug-status). Before this the machine is Initialising and ignores
  // frontend input.
  void probed() noexcept;

  // The frontend's state node changed. nullopt: its value does not parse.
  FsmActions frontend_changed(std::optional<XenbusState> frontend) noexcept;
  // The frontend's state node (or its whole directory) is gone.
  FsmActions frontend_gone() noexcept;
  // The backend directory was removed (toolstack hot-unplug or cleanup).
  FsmActions backend_gone() noexcept;
  // <backend>/online changed (or disappeared: treat as 0).
  FsmActions online_changed(bool online) noexcept;
  // Result of the kConnect action: 0, or the positive errno it failed with.
  // Must be the next input after kConnect (the driver connects
  // synchronously); ignored otherwise.
  FsmActions connect_done(int error) noexcept;
  // The connected device hit an error it cannot recover from (a queue
  // halted on a misbehaving frontend...). Positive errno.
  FsmActions device_failed(int error) noexcept;

  // The state this backend last published.
  [[nodiscard]] XenbusState state() const noexcept { return state_; }
  [[nodiscard]] bool online() const noexcept { return online_; }
  [[nodiscard]] bool connected() const noexcept { return state_ == XenbusState::kConnected; }
  [[nodiscard]] bool destroyed() const noexcept { return destroyed_; }
  // Whether the device may hold mappings/channels (a connect was issued and
  // no disconnect since).
  [[nodiscard]] bool resources_held() const noexcept { return held_; }
  [[nodiscard]] bool error_written() const noexcept { return error_written_; }
  // The last frontend state seen (nullopt: never, gone, or unparsable).
  [[nodiscard]] std::optional<XenbusState> frontend_state() const noexcept { return frontend_; }

 private:
  void disconnect_if_held(FsmActions& out) noexcept;
  void write_state(FsmActions& out, XenbusState s) noexcept;
  void destroy(FsmActions& out) noexcept;
  void fail(FsmActions& out, int error, FsmErrorReason why) noexcept;
  void reconnect_or_finish(FsmActions& out) noexcept;

  XenbusState state_ = XenbusState::kInitialising;
  std::optional<XenbusState> frontend_;
  bool online_ = true;
  bool probed_ = false;
  bool held_ = false;
  bool connecting_ = false;
  bool error_written_ = false;
  bool destroyed_ = false;
};

}  // namespace xenpath
