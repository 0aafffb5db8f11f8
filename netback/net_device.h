// The "vif" device type: netback's xenbus side, over BackendDriver.
//
// Toolstack keys (backend directory, as libxl writes them), read in the
// probe transaction:
//   mac    the guest's MAC, "xx:xx:xx:xx:xx:xx" (hex, 1-2 digits a group, as
//          Linux's xen_net_read_mac); a malformed one fails the connect
//   rate   optional "<bytes>,<usec>" credit (xen_net_read_rate: decimal,
//          nothing else; malformed or absent = unlimited, said once)
//   bridge, mtu, ip   dom0's side of the port (netback/vif_link.h): once
//          the port is open, its interface joins the bridge, takes the MTU
//          and goes up (VifOptions::link)
// Backend keys, written before InitWait: feature-sg, feature-gso-tcpv4,
//   feature-gso-tcpv6, feature-ipv6-csum-offload, feature-rx-copy=1,
//   feature-rx-flip=0, feature-multicast-control,
//   feature-dynamic-multicast-control, feature-split-event-channels,
//   multi-queue-max-queues, feature-ctrl-ring.
// Frontend keys, read in one transaction (drivers/net/xen-netback/xenbus.c
// is the reference; deviations are stricter parsing only):
//   multi-queue-num-queues (absent = 1; 0, above the maximum or malformed:
//     refused), then per queue (top level for one queue, queue-%u/ for
//     several) tx-ring-ref, rx-ring-ref, and event-channel-tx +
//     event-channel-rx (split) or event-channel;
//   request-rx-copy: must be present and non-zero (Linux: EOPNOTSUPP);
//   feature-rx-notify (without it, as Linux: no stall detection, 30 ms
//     drain), feature-sg, feature-gso-tcpv4/6 (GSO only with sg, as Linux's
//     netdev features), feature-no-csum-offload, feature-ipv6-csum-offload,
//     request-multicast-control: flags, absent or not a number = 0 (as
//     xenbus_read_unsigned); request-multicast-control is also watched
//     while connected and switches filtering on the fly
//     (feature-dynamic-multicast-control);
//   ctrl-ring-ref (optional) + event-channel-ctrl (then required).
// Every value is guest input: strictly parsed, bounded.
//
// Each VIF gets its own PacketPort (one queue per frontend queue) from a
// port factory: by default a DPDK vdev from a devargs template, net_tap
// vif<domid>.<devid> like kernel netback's interfaces. Queues are spread
// over NetWorkers; a halted queue fails the device (error node, Closing)
// through the error sink. The control ring runs on queue 0's worker.
//
// Threads: a VifDevice is owned by the driver's control thread; its queues
// and control channel live on worker reactors, started and stopped through
// Reactor::call. Stats are single-writer counters of the workers, readable
// anywhere. Guest memory: through its queues and control channel only.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.h"
#include "common/xenbus/backend_driver.h"
#include "netback/net_ctrl_channel.h"
#include "netback/net_queue.h"
#include "netback/net_rate.h"
#include "netback/port.h"
#include "netback/vif_link.h"

namespace xenpath {

class DpdkEnv;
struct DpdkPortConfig;

// Where a device reports that it cannot go on (a halted queue); called on a
// worker thread. The daemon wires it to BackendDriver::report_device_error.
using VifErrorSink = std::function<void(const DeviceAddress&, int error)>;

// Opens the port of one VIF with `queues` rx and tx queues (control
// thread). The port must be usable by the queues' worker threads.
using VifPortFactory = std::function<Result<std::unique_ptr<PacketPort>>(const DeviceAddress& addr, uint16_t queues)>;

// The default factory: DPDK ports from `devargs_template` (expand_devargs:
// {domid}, {devid}), `base` for the rest of their configuration. `env` and
// `pool` must outlive every port.
VifPortFactory dpdk_vif_port_factory(DpdkEnv& env, PacketPool& pool, std::string devargs_template,
                                     const DpdkPortConfig& base);

struct VifOptions {
  std::string type_name = "vif";
  unsigned max_queues = 0;  // multi-queue-max-queues; 0: one per worker
  // The same measured default as a bare VifQueue (see kTxCopyBelowDefault);
  // xenpath-netback --tx-copy-below sets it (0: map every remainder, as Linux).
  NetifTxLimits tx_limits{.copy_below = VifQueue::kTxCopyBelowDefault};
  bool zero_copy = true;
  // Receive-side coalescing for frontends that take GSO (VifQueue::Config::rx_gro);
  // xenpath-netback --rx-gro.
  bool rx_gro = true;
  size_t rx_backlog = 256;  // packets held per queue for a guest without buffers
  std::chrono::microseconds port_poll{1000};
  // Linux's rx_stall_timeout / rx_drain_timeout module parameters (for a
  // frontend with feature-rx-notify; without it: no stall detection and a
  // 30 ms drain, as Linux).
  std::chrono::milliseconds rx_stall_timeout{60'000};
  std::chrono::milliseconds rx_drain_timeout{10'000};
  bool ctrl_ring = true;  // offer feature-ctrl-ring
  // Attaches each port's dom0 interface (bridge, MTU, up); null: left
  // alone. Owned by the service, outlives every device; control thread.
  VifLink* link = nullptr;
  // Bounded wait at disconnect for guest pages still held by packets in
  // flight (in the port, a peer); after it the queue is kept mapped (leak,
  // logged) rather than unmapped under a reader.
  std::chrono::milliseconds drain_timeout{5'000};
};

// Parsers for the toolstack keys, exposed for tests.
std::optional<MacAddr> parse_vif_mac(std::string_view s) noexcept;

// What the frontend wrote, after validation.
struct VifFrontendConfig {
  struct Queue {
    GrantRef tx_ring_ref = 0;
    GrantRef rx_ring_ref = 0;
    EvtchnPort tx_port = 0;
    EvtchnPort rx_port = 0;  // == tx_port without split channels
  };
  std::vector<Queue> queues;
  bool rx_notify = false;
  bool sg = false;
  bool gso_tcpv4 = false;
  bool gso_tcpv6 = false;
  bool csum = true;        // !feature-no-csum-offload
  bool ipv6_csum = false;  // feature-ipv6-csum-offload
  bool multicast_control = false;
  bool ctrl_ring = false;
  GrantRef ctrl_ring_ref = 0;
  EvtchnPort ctrl_port = 0;
};

class VifDevice final : public BackendDevice {
 public:
  VifDevice(const DeviceAddress& addr, const VifOptions& opts, std::vector<NetWorker*> workers, PacketPool& pool,
            VifPortFactory ports, std::optional<MacAddr> mac, RateSpec rate, VifErrorSink sink,
            VifLinkKeys link_keys = {}) noexcept;
  ~VifDevice() override;

  Status write_backend_features(XenStore& xs, XsTxn t) noexcept override;
  Status read_frontend(XenStore& xs, XsTxn t) noexcept override;
  Status connect() noexcept override;
  void disconnect() noexcept override;
  // "rate" changed: re-read it and hand it to every queue, as Linux's
  // credit watch does (a refused packet waiting for credit retries at once).
  void backend_key_changed(XenStore& xs, std::string_view key) noexcept override;
  // request-multicast-control, watched while connected (Linux's
  // xen_register_mcast_ctrl_watch, which feature-dynamic-multicast-control
  // promises the frontend).
  [[nodiscard]] std::span<const std::string_view> frontend_watches() const noexcept override;
  // The frontend rewrote request-multicast-control: filtering goes on or
  // off on every queue (xen_mcast_ctrl_changed). The guest's list is kept
  // either way, as Linux keeps it: MCAST_ADD/DEL are applied while
  // filtering is off too, so switching it on filters against what the
  // guest subscribed to so far.
  void frontend_key_changed(XenStore& xs, std::string_view key) noexcept override;
  // Summary: mac, rate, port, per-queue counters (the stats file's entry);
  // detail: the frontend's negotiated features and each queue's rings and
  // event channels.
  void describe(nlohmann::json& out, bool detail) const override;
  // "rate": "<bytes>,<usec>" or "unlimited", written to the backend's rate
  // key (as a toolstack does), which the watch then applies.
  Result<std::string> set_param(XenStore& xs, std::string_view key, std::string_view value) noexcept override;
  [[nodiscard]] std::span<const std::string_view> param_keys() const noexcept override;

  [[nodiscard]] bool connected() const noexcept { return connected_.load(std::memory_order_acquire); }
  [[nodiscard]] size_t queue_count() const noexcept { return stats_.size(); }
  // Per queue, valid while connected (and until the next connect).
  [[nodiscard]] const VifQueueStats& queue_stats(size_t i) const noexcept { return *stats_[i]; }
  [[nodiscard]] const NetifCtrlStats* ctrl_stats() const noexcept { return ctrl_stats_.get(); }
  [[nodiscard]] const VifFrontendConfig& frontend() const noexcept { return front_; }
  [[nodiscard]] const std::optional<MacAddr>& mac() const noexcept { return mac_; }
  [[nodiscard]] const RateSpec& rate() const noexcept { return rate_; }
  [[nodiscard]] const VifLinkKeys& link_keys() const noexcept { return link_keys_; }
  [[nodiscard]] const DeviceAddress& address() const noexcept { return addr_; }
  // The VIF's port while connected (control thread; stats() from anywhere).
  [[nodiscard]] PacketPort* port() const noexcept { return port_.get(); }

 private:
  // The port is open: its interface joins the toolstack's bridge (logged,
  // never fails the connect).
  void attach_link() noexcept;
  [[nodiscard]] VifLinkRequest link_request() const;

  DeviceAddress addr_;
  VifOptions opts_;
  std::vector<NetWorker*> workers_;
  PacketPool& pool_;
  VifPortFactory ports_;
  std::optional<MacAddr> mac_;
  RateSpec rate_;
  VifErrorSink sink_;
  VifLinkKeys link_keys_;
  bool link_attached_ = false;  // VifLink::attach succeeded for the current port
  DeviceLog log_;
  unsigned max_queues_;

  VifFrontendConfig front_;

  std::unique_ptr<PacketPort> port_;
  std::vector<std::unique_ptr<VifQueue>> queues_;
  std::vector<NetWorker*> queue_workers_;
  std::vector<std::unique_ptr<VifQueueStats>> stats_;
  std::unique_ptr<NetifCtrlChannel> ctrl_;
  std::unique_ptr<NetifCtrlStats> ctrl_stats_;
  std::shared_ptr<void> siblings_;
  std::vector<std::unique_ptr<SteerInbox>>
      inboxes_;          // outlive the queues  // what queues post to each other (net_device.cc)
  bool leaked_ = false;  // a queue kept mapped at a disconnect: the port stays too
  std::atomic<bool> connected_{false};
};

class VifDeviceType final : public DeviceType {
 public:
  // Queues are spread over `workers` (which, like `pool`, must outlive
  // every device).
  VifDeviceType(std::vector<NetWorker*> workers, PacketPool& pool, VifPortFactory ports, VifOptions opts = {},
                VifErrorSink sink = {}) noexcept
      : workers_(std::move(workers)),
        pool_(pool),
        ports_(std::move(ports)),
        opts_(std::move(opts)),
        sink_(std::move(sink)) {}

  [[nodiscard]] std::string_view name() const noexcept override { return opts_.type_name; }
  // Reads mac, rate and the link keys. ENOENT while the toolstack has not written mac.
  Result<std::unique_ptr<BackendDevice>> create(const DeviceAddress& addr, XenStore& xs, XsTxn t) noexcept override;

 private:
  std::vector<NetWorker*> workers_;
  PacketPool& pool_;
  VifPortFactory ports_;
  VifOptions opts_;
  VifErrorSink sink_;
  size_t next_ = 0;
};

}  // namespace xenpath
