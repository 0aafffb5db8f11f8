#include "common/xenbus/backend_fsm.h"

#include <cerrno>

namespace xenpath {

namespace {

FsmAction action(FsmActionKind kind) noexcept {
  FsmAction a;
  a.kind = kind;
  return a;
}

}  // namespace

void BackendFsm::probed() noexcept {
  if (destroyed_ || probed_) return;
  probed_ = true;
  state_ = XenbusState::kInitWait;
}

void BackendFsm::disconnect_if_held(FsmActions& out) noexcept {
  // disconnect() is idempotent, but a device that never connected has
  // nothing to release: skipping it keeps duplicate events action-free.
  if (!held_) return;
  out.push(action(FsmActionKind::kDisconnect));
  held_ = false;
  connecting_ = false;
}

void BackendFsm::write_state(FsmActions& out, XenbusState s) noexcept {
  // As xenbus_switch_state(): an unchanged state is not rewritten (that
  // would fire every watcher again for nothing).
  if (state_ == s) return;
  FsmAction a = action(FsmActionKind::kWriteState);
  a.state = s;
  out.push(a);
  state_ = s;
}

void BackendFsm::destroy(FsmActions& out) noexcept {
  disconnect_if_held(out);
  out.push(action(FsmActionKind::kDestroy));
  destroyed_ = true;
}

void BackendFsm::fail(FsmActions& out, int error, FsmErrorReason why) noexcept {
  // Release first: a device we give up on must not keep a guest's pages
  // mapped in dom0 while it waits for the frontend to close.
  disconnect_if_held(out);
  FsmAction a = action(FsmActionKind::kWriteError);
  a.error = error;
  a.reason = why;
  out.push(a);
  error_written_ = true;
  write_state(out, XenbusState::kClosing);
}

void BackendFsm::reconnect_or_finish(FsmActions& out) noexcept {
  disconnect_if_held(out);
  if (!online_) {
    // The toolstack is removing the device (libxl wrote online=0): a
    // frontend that restarts now does not get it back; finish as a Closed
    // frontend would, so the toolstack's wait for Closed ends.
    write_state(out, XenbusState::kClosed);
    destroy(out);
    return;
  }
  if (error_written_) {
    out.push(action(FsmActionKind::kClearError));
    error_written_ = false;
  }
  write_state(out, XenbusState::kInitWait);
}

FsmActions BackendFsm::frontend_changed(std::optional<XenbusState> frontend) noexcept {
  FsmActions out;
  if (destroyed_) return out;
  frontend_ = frontend;
  if (!probed_) return out;

  if (!frontend) {
    // Unparsable: a broken or hostile frontend. Once closing there is
    // nothing more to say (and repeating the error would let the guest
    // make us write xenstore at will).
    if (state_ == XenbusState::kClosing || state_ == XenbusState::kClosed) return out;
    fail(out, EINVAL, FsmErrorReason::kBadFrontendState);
    return out;
  }

  switch (*frontend) {
    case XenbusState::kInitialising:
      // The frontend (re)starts: guest resume, kexec, migration. From
      // InitWait this is the normal first value (the toolstack wrote it).
      if (state_ == XenbusState::kConnected || state_ == XenbusState::kClosing || state_ == XenbusState::kClosed) {
        reconnect_or_finish(out);
      }
      break;

    case XenbusState::kInitWait:
      // Legitimate for protocols where the frontend waits on the backend;
      // nothing to do for us.
      break;

    case XenbusState::kInitialised:
    case XenbusState::kConnected:
      // Both mean "my keys are written": a coalesced watch may show us only
      // Connected. Closing/Closed backends reconnect only through
      // Initialising, so a stale value cannot resurrect a closed device.
      if (state_ != XenbusState::kInitWait) break;
      disconnect_if_held(out);
      out.push(action(FsmActionKind::kConnect));
      held_ = true;  // connect may acquire part of its resources and fail
      connecting_ = true;
      break;

    case XenbusState::kClosing:
      if (state_ != XenbusState::kClosed) write_state(out, XenbusState::kClosing);
      break;

    case XenbusState::kClosed:
      disconnect_if_held(out);
      write_state(out, XenbusState::kClosed);
      if (!online_) destroy(out);
      break;

    case XenbusState::kUnknown:
    case XenbusState::kReconfiguring:
    case XenbusState::kReconfigured:
      // Unknown is what a reader reports for a missing node, never a value
      // a frontend writes; the generic backends do not reconfigure.
      if (state_ == XenbusState::kClosing || state_ == XenbusState::kClosed) break;
      fail(out, EINVAL, FsmErrorReason::kBadFrontendState);
      break;
  }
  return out;
}

FsmActions BackendFsm::frontend_gone() noexcept {
  FsmActions out;
  if (destroyed_) return out;
  frontend_.reset();
  disconnect_if_held(out);
  // Tell the toolstack we are done (libxl waits for Closed on remove); the
  // driver writes it only if the backend node still exists.
  if (probed_) write_state(out, XenbusState::kClosed);
  destroy(out);
  return out;
}

FsmActions BackendFsm::backend_gone() noexcept {
  FsmActions out;
  if (destroyed_) return out;
  disconnect_if_held(out);
  if (probed_) write_state(out, XenbusState::kClosed);
  destroy(out);
  return out;
}

FsmActions BackendFsm::online_changed(bool online) noexcept {
  FsmActions out;
  if (destroyed_) return out;
  online_ = online;
  // Offline and already Closed: the frontend closed before the toolstack
  // asked for removal; nothing will come back for this device.
  if (!online && probed_ && state_ == XenbusState::kClosed) destroy(out);
  return out;
}

FsmActions BackendFsm::connect_done(int error) noexcept {
  FsmActions out;
  if (destroyed_ || !connecting_) return out;
  connecting_ = false;
  if (error == 0) {
    write_state(out, XenbusState::kConnected);
    return out;
  }
  fail(out, error, FsmErrorReason::kConnectFailed);
  return out;
}

FsmActions BackendFsm::device_failed(int error) noexcept {
  FsmActions out;
  if (destroyed_ || !probed_) return out;
  // Already on the way down: the frontend has been told.
  if (state_ == XenbusState::kClosing || state_ == XenbusState::kClosed) return out;
  fail(out, error > 0 ? error : EIO, FsmErrorReason::kDeviceFailed);
  return out;
}

}  // namespace xenpath
