// The "echo" device type: the smallest complete split driver, used by the
// lifecycle tests and by the demo until the block backend lands. It has
// everything a real backend has — a granted one-page shared ring, an
// interdomain event channel, a poller on a worker reactor, the xenbus
// handshake — and a trivial protocol:
//
//   request  {id, value}            frontend -> backend
//   response {id, value + 1, status} backend -> frontend
//
// A request whose value is kEchoReservedValue (value + 1 would wrap) is
// answered with kEchoStatusError: the "bad request gets an error response"
// path of every backend.
//
// Frontend keys: ring-ref (one grant of the ring page, writable),
// event-channel (an unbound port offered to the backend domain).
// Backend keys written before InitWait: echo-version.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/reactor.h"
#include "common/result.h"
#include "common/ring_types.h"
#include "common/stats.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/platform.h"
#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"
#include "common/xen_worker.h"
#include "common/xenbus/backend_driver.h"
#include "sim/front_ring.h"
#include "sim/sim_host.h"
#include "sim/sim_xenbus_frontend.h"

namespace xenpath::sim {

struct echo_request {
  uint64_t id;
  uint64_t value;
};
struct echo_response {
  uint64_t id;
  uint64_t value;
  int32_t status;
  uint32_t pad;
};
DEFINE_RING_TYPES(echo, struct echo_request, struct echo_response);

// Ring traits for BackRing<>/SimFrontRing<>.
using EchoRing = RingTypes<echo_sring, echo_back_ring, echo_front_ring, echo_request, echo_response>;

inline constexpr uint64_t kEchoReservedValue = UINT64_MAX;
inline constexpr int32_t kEchoStatusOk = 0;
inline constexpr int32_t kEchoStatusError = -1;
inline constexpr std::string_view kEchoVersion = "1";

class EchoQueue;

// Where a device reports an error it cannot recover from (a halted queue);
// called on the worker thread. The daemon wires it to
// BackendDriver::report_device_error, which is safe from any thread.
using EchoErrorSink = std::function<void(const DeviceAddress&, int error)>;

// The Xen handles of one reactor, shared by the echo queues it runs
// (common/xen_worker.h).
using EchoWorker = XenWorker;

// The backend device: owned by the BackendDriver's control thread; the
// datapath (EchoQueue) lives on a worker and is connected/disconnected
// through Reactor::call.
class EchoDevice final : public BackendDevice {
 public:
  EchoDevice(const DeviceAddress& addr, EchoWorker& worker, EchoErrorSink sink = {}) noexcept;
  ~EchoDevice() override;

  Status write_backend_features(XenStore& xs, XsTxn t) noexcept override;
  Status read_frontend(XenStore& xs, XsTxn t) noexcept override;
  Status connect() noexcept override;
  void disconnect() noexcept override;

  // Written by the worker (single writer), readable from any thread.
  [[nodiscard]] const RingQueueStats& stats() const noexcept { return stats_; }
  [[nodiscard]] bool connected() const noexcept { return connected_.load(std::memory_order_acquire); }

 private:
  DeviceAddress addr_;
  EchoWorker& worker_;
  GrantRef ring_ref_ = 0;
  EvtchnPort remote_port_ = 0;
  EchoErrorSink sink_;
  // Created and destroyed on the worker (inside Reactor::call); the control
  // thread only tests it, never while a call runs.
  std::unique_ptr<EchoQueue> queue_;
  std::atomic<bool> connected_{false};
  RingQueueStats stats_;
  DeviceLog log_;
};

// Serves devices of type `name` (default "echo"), spreading them over the
// workers round-robin. The workers must outlive every device.
class EchoDeviceType final : public DeviceType {
 public:
  explicit EchoDeviceType(std::vector<EchoWorker*> workers, std::string name = "echo", EchoErrorSink sink = {}) noexcept
      : workers_(std::move(workers)), name_(std::move(name)), sink_(std::move(sink)) {}

  [[nodiscard]] std::string_view name() const noexcept override { return name_; }
  Result<std::unique_ptr<BackendDevice>> create(const DeviceAddress& addr, XenStore& xs, XsTxn t) noexcept override;

 private:
  std::vector<EchoWorker*> workers_;
  std::string name_;
  EchoErrorSink sink_;
  size_t next_ = 0;
};

// The guest side: what an echo frontend driver in a simulated guest does.
// It allocates and grants the ring page from its SimDomain, offers an
// unbound port, performs the xenbus handshake, then sends requests and
// checks every answer. Owned by one thread (the test's or the demo's guest
// thread); the EventChannel and XenStore may be shared by the guest's
// frontends on that thread. Touches the guest's own ring page.
class SimEchoFrontend {
 public:
  struct Exchange {
    uint32_t ok = 0;      // answered with value + 1 and kEchoStatusOk
    uint32_t errors = 0;  // answered with kEchoStatusError
  };

  static Result<std::unique_ptr<SimEchoFrontend>> attach(
      SimDomain& dom, EventChannel& evtchn, XenStore& xs, std::string frontend_path,
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) noexcept;
  ~SimEchoFrontend();
  SimEchoFrontend(const SimEchoFrontend&) = delete;
  SimEchoFrontend& operator=(const SimEchoFrontend&) = delete;

  // Grants a fresh ring page, offers a port, runs the handshake.
  Status connect() noexcept;
  // The same in two halves (see SimXenbusFrontend::publish).
  Status begin_connect() noexcept;
  Status finish_connect() noexcept { return xenbus_->await_connected(); }
  // Sends `values` (in bursts as the ring allows) and waits for every
  // answer. EPROTO if an answer is wrong (id unknown, value not value + 1,
  // error status on a good value), ETIMEDOUT if answers stop coming.
  Result<Exchange> exchange(std::span<const uint64_t> values) noexcept;
  // `n` requests with distinct ordinary values.
  Result<Exchange> exchange(uint32_t n) noexcept;
  // Orderly close, then revokes the grant (EBUSY if the backend still maps
  // it: a leak) and closes the port.
  Status close() noexcept;
  // After close(): back to Initialising (guest resume/kexec).
  Status restart() noexcept;
  // Revokes the grant (EBUSY while the backend still maps it: a leak) and
  // closes the port, without the xenbus handshake (after a hot-unplug).
  Status release() noexcept;
  // Misbehaviour for hostile-input tests: the raw ring, and a notification.
  [[nodiscard]] SimFrontRing<EchoRing>& ring() noexcept { return ring_; }
  Status kick() noexcept { return evtchn_.notify(port_); }
  // The guest died (SimHost::destroy_domain): forget the page, grant and
  // port without touching the dead domain.
  void abandon() noexcept { have_page_ = granted_ = bound_ = false; }

  [[nodiscard]] SimXenbusFrontend& xenbus() noexcept { return *xenbus_; }
  [[nodiscard]] GrantRef ring_ref() const noexcept { return ref_; }
  [[nodiscard]] EvtchnPort port() const noexcept { return port_; }
  [[nodiscard]] bool granted() const noexcept { return granted_; }

 private:
  SimEchoFrontend(SimDomain& dom, EventChannel& evtchn, std::unique_ptr<SimXenbusFrontend> xb,
                  std::chrono::milliseconds timeout) noexcept;
  void wait_event(std::chrono::milliseconds limit) noexcept;

  SimDomain& dom_;
  EventChannel& evtchn_;
  std::unique_ptr<SimXenbusFrontend> xenbus_;
  std::chrono::milliseconds timeout_;
  SimFrontRing<EchoRing> ring_;
  uint32_t pfn_ = 0;
  bool have_page_ = false;
  bool granted_ = false;
  bool bound_ = false;
  GrantRef ref_ = 0;
  EvtchnPort port_ = 0;
  uint64_t next_id_ = 1;
  uint64_t next_value_ = 1000;
};

}  // namespace xenpath::sim
