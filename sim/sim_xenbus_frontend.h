// SimXenbusFrontend: the frontend half of the xenbus handshake, as a
// simulated guest's kernel performs it (Linux xenbus_probe_frontend.c and
// the blkfront/netfront connect paths), on an in-process XenStore acting as
// the guest domain:
//
//   connect():  wait for backend InitWait, write the device's keys and
//               state=Initialised in ONE transaction, wait for backend
//               Connected, then state=Connected
//   close():    state=Closing, wait for the backend to leave Connected,
//               state=Closed, wait for backend Closed (or its removal)
//   restart():  state=Initialising (resume/kexec/migration), wait for InitWait
//
// Every wait is bounded (ETIMEDOUT) and uses a watch on the backend's state
// node, never polling. The raw writers let tests play a hostile guest.
//
// Thread ownership: one thread uses a SimXenbusFrontend and its XenStore
// (blocking waits). It touches no guest memory itself.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"
#include "common/xenbus/state.h"
#include "sim/sim_toolstack.h"

namespace xenpath::sim {

class SimXenbusFrontend {
 public:
  // Reads <frontend>/backend and watches <backend>/state. `xs` acts as the
  // guest; it must outlive the frontend.
  static Result<std::unique_ptr<SimXenbusFrontend>> attach(
      XenStore& xs, std::string frontend_path, std::chrono::milliseconds timeout = std::chrono::seconds(5)) noexcept;
  ~SimXenbusFrontend();
  SimXenbusFrontend(const SimXenbusFrontend&) = delete;
  SimXenbusFrontend& operator=(const SimXenbusFrontend&) = delete;

  [[nodiscard]] const std::string& frontend_path() const noexcept { return frontend_; }
  [[nodiscard]] const std::string& backend_path() const noexcept { return backend_; }
  [[nodiscard]] DomId backend_id() const noexcept { return backend_id_; }

  // The full handshake: publish() then await_connected().
  Status connect(const XsKeys& keys) noexcept;
  // First half: wait for InitWait, then the keys and Initialised in one
  // transaction. Lets a guest with many devices start them all before
  // waiting for any (as a booting kernel does).
  Status publish(const XsKeys& keys) noexcept;
  // Second half: wait for the backend's verdict, then state=Connected.
  // EPIPE if the backend went Closing/Closed instead (it refused the keys:
  // its error node says why).
  Status await_connected() noexcept;
  // Orderly close. Leaves the frontend in Closed.
  Status close() noexcept;
  // Back to Initialising and wait for the backend's InitWait.
  Status restart() noexcept;

  // Raw pieces for tests and custom frontends. write_state() writes only
  // while the node exists (xenbus_switch_state); write_raw() writes anything.
  Status write_state(XenbusState s) noexcept;
  Status write_raw(std::string_view key, std::string_view value) noexcept;
  Result<XenbusState> backend_state() noexcept;
  // Waits until the backend's state satisfies `accept` (a bit per state);
  // ENOENT if the backend node vanished, ETIMEDOUT after the timeout.
  Result<XenbusState> wait_backend(uint32_t accept) noexcept;
  Result<XenbusState> wait_backend(XenbusState s) noexcept { return wait_backend(bit(s)); }

  static constexpr uint32_t bit(XenbusState s) noexcept { return 1u << static_cast<unsigned>(s); }

 private:
  SimXenbusFrontend(XenStore& xs, std::string frontend, std::string backend, DomId backend_id, std::string token,
                    std::chrono::milliseconds timeout) noexcept;

  XenStore& xs_;
  std::string frontend_;
  std::string backend_;
  DomId backend_id_;
  std::string token_;
  std::chrono::milliseconds timeout_;
};

}  // namespace xenpath::sim
