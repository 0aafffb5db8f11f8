#include "netback/net_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/xenbus/keys.h"
#include "netback/port_dpdk.h"

namespace xenpath {

namespace {

// An optional flag: absent or not a number means 0, as Linux's
// xenbus_read_unsigned() treats it.
Result<uint32_t> read_flag(XenStore& xs, XsTxn t, std::string_view dir, std::string_view key, uint32_t dflt) {
  auto v = read_decimal<uint32_t>(xs, t, dir, key);
  if (v) return *v;
  if (v.error() == ENOENT || v.error() == EINVAL) return dflt;
  return unexpected(v.error());
}

// A required key: absent or malformed is the frontend's error (EINVAL).
template <typename T>
Result<T> read_required(XenStore& xs, XsTxn t, std::string_view dir, std::string_view key) {
  auto v = read_decimal<T>(xs, t, dir, key);
  if (v) return *v;
  return unexpected(v.error() == ENOENT ? EINVAL : v.error());
}

// The siblings a queue or the control channel forwards state to. Each
// entry is touched only on its own queue's reactor thread (posted tasks),
// so `alive` needs no lock: it is cleared there before the queue goes.
struct VifSiblings {
  struct Entry {
    Reactor* reactor = nullptr;
    VifQueue* queue = nullptr;
    bool alive = false;
  };
  std::vector<Entry> entries;
};

}  // namespace

std::optional<MacAddr> parse_vif_mac(std::string_view s) noexcept {
  // xen_net_read_mac: six hex groups separated by ':', nothing after. We
  // accept one or two digits a group (simple_strtoul would take more and
  // truncate: refused here).
  MacAddr mac;
  size_t pos = 0;
  for (size_t i = 0; i < 6; ++i) {
    unsigned v = 0;
    size_t digits = 0;
    while (pos < s.size() && digits < 3) {
      const char c = s[pos];
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      if (d < 0) break;
      v = v * 16 + static_cast<unsigned>(d);
      ++digits;
      ++pos;
    }
    if (digits == 0 || digits > 2) return std::nullopt;
    mac.bytes[i] = static_cast<uint8_t>(v);
    if (i < 5) {
      if (pos >= s.size() || s[pos] != ':') return std::nullopt;
      ++pos;
    }
  }
  if (pos != s.size()) return std::nullopt;
  return mac;
}

VifPortFactory dpdk_vif_port_factory(DpdkEnv& env, PacketPool& pool, std::string devargs_template,
                                     const DpdkPortConfig& base) {
  return [&env, &pool, tmpl = std::move(devargs_template), base](
             const DeviceAddress& addr, uint16_t queues) -> Result<std::unique_ptr<PacketPort>> {
    XP_ASSIGN_OR_RETURN(std::string devargs, expand_devargs(tmpl, addr.frontend_id, addr.devid, queues));
    DpdkPortConfig c = base;
    c.devargs = std::move(devargs);
    c.rx_queues = queues;
    c.tx_queues = queues;
    return env.open_port(pool, c);
  };
}

// ---------------------------------------------------------------------------

VifDevice::VifDevice(const DeviceAddress& addr, const VifOptions& opts, std::vector<NetWorker*> workers,
                     PacketPool& pool, VifPortFactory ports, std::optional<MacAddr> mac, RateSpec rate,
                     VifErrorSink sink, VifLinkKeys link_keys) noexcept
    : addr_(addr),
      opts_(opts),
      workers_(std::move(workers)),
      pool_(pool),
      ports_(std::move(ports)),
      mac_(mac),
      rate_(rate),
      sink_(std::move(sink)),
      link_keys_(std::move(link_keys)),
      log_(fmt::format("{} {}/{}: ", addr.type, addr.frontend_id, addr.devid)),
      max_queues_(opts.max_queues != 0 ? opts.max_queues
                                       : static_cast<unsigned>(std::max<size_t>(workers_.size(), 1))) {}

VifDevice::~VifDevice() { disconnect(); }

Status VifDevice::write_backend_features(XenStore& xs, XsTxn t) noexcept {
  const std::string& b = addr_.backend_path;
  auto w = [&](std::string_view key, uint64_t value) { return write_decimal(xs, t, b, key, value); };
  XP_TRY(w("feature-sg", 1));
  XP_TRY(w("feature-gso-tcpv4", 1));
  XP_TRY(w("feature-gso-tcpv6", 1));
  XP_TRY(w("feature-ipv6-csum-offload", 1));
  XP_TRY(w("feature-rx-copy", 1));
  XP_TRY(w("feature-rx-flip", 0));
  XP_TRY(w("feature-multicast-control", 1));
  XP_TRY(w("feature-dynamic-multicast-control", 1));
  XP_TRY(w("feature-split-event-channels", 1));
  XP_TRY(w("multi-queue-max-queues", max_queues_));
  XP_TRY(w("feature-ctrl-ring", opts_.ctrl_ring ? 1 : 0));
  return ok();
}

Status VifDevice::read_frontend(XenStore& xs, XsTxn t) noexcept {
  // May run again when the transaction is retried: store only what is read.
  const std::string& fe = addr_.frontend_path;
  VifFrontendConfig f;
  try {
    XP_ASSIGN_OR_RETURN(const uint32_t nqueues, read_queue_count(xs, t, fe, max_queues_, log_));
    f.queues.resize(nqueues);
    for (uint32_t q = 0; q < nqueues; ++q) {
      const std::string dir = nqueues == 1 ? fe : fmt::format("{}/queue-{}", fe, q);
      VifFrontendConfig::Queue& fq = f.queues[q];
      auto tx = read_required<GrantRef>(xs, t, dir, "tx-ring-ref");
      auto rx = read_required<GrantRef>(xs, t, dir, "rx-ring-ref");
      if (!tx || !rx) {
        log_.guest("queue {}: missing or malformed tx-ring-ref/rx-ring-ref", q);
        return unexpected(!tx ? tx.error() : rx.error());
      }
      fq.tx_ring_ref = *tx;
      fq.rx_ring_ref = *rx;
      // Split channels first, then the single one (as Linux tries them).
      auto etx = read_decimal<EvtchnPort>(xs, t, dir, "event-channel-tx");
      auto erx = read_decimal<EvtchnPort>(xs, t, dir, "event-channel-rx");
      if (etx && erx) {
        fq.tx_port = *etx;
        fq.rx_port = *erx;
      } else {
        if ((!etx && etx.error() == EINVAL) || (!erx && erx.error() == EINVAL)) {
          log_.guest("queue {}: malformed event-channel-tx/-rx", q);
          return unexpected(EINVAL);
        }
        auto ev = read_required<EvtchnPort>(xs, t, dir, "event-channel");
        if (!ev) {
          log_.guest("queue {}: missing or malformed event-channel(-tx/-rx)", q);
          return unexpected(ev.error());
        }
        fq.tx_port = fq.rx_port = *ev;
      }
    }
    // request-rx-copy: the only receive mode (no page flipping). Absent
    // or 0 is refused as Linux refuses it (EOPNOTSUPP); a malformed value
    // is the frontend's error.
    auto rx_copy = read_decimal<uint32_t>(xs, t, fe, "request-rx-copy");
    if (!rx_copy && rx_copy.error() != ENOENT) {
      log_.guest("malformed request-rx-copy");
      return unexpected(rx_copy.error());
    }
    if (!rx_copy || *rx_copy == 0) {
      log_.guest("frontend does not request rx-copy (page flipping is not supported)");
      return unexpected(EOPNOTSUPP);
    }
    XP_ASSIGN_OR_RETURN(const uint32_t rx_notify, read_flag(xs, t, fe, "feature-rx-notify", 0));
    XP_ASSIGN_OR_RETURN(const uint32_t sg, read_flag(xs, t, fe, "feature-sg", 0));
    XP_ASSIGN_OR_RETURN(const uint32_t gso4, read_flag(xs, t, fe, "feature-gso-tcpv4", 0));
    XP_ASSIGN_OR_RETURN(const uint32_t gso6, read_flag(xs, t, fe, "feature-gso-tcpv6", 0));
    XP_ASSIGN_OR_RETURN(const uint32_t no_csum, read_flag(xs, t, fe, "feature-no-csum-offload", 0));
    XP_ASSIGN_OR_RETURN(const uint32_t csum6, read_flag(xs, t, fe, "feature-ipv6-csum-offload", 0));
    XP_ASSIGN_OR_RETURN(const uint32_t mcast, read_flag(xs, t, fe, "request-multicast-control", 0));
    f.rx_notify = rx_notify != 0;
    f.sg = sg != 0;
    // GSO needs scatter-gather (Linux's netdev feature dependencies).
    f.gso_tcpv4 = f.sg && gso4 != 0;
    f.gso_tcpv6 = f.sg && gso6 != 0;
    f.csum = no_csum == 0;
    f.ipv6_csum = csum6 != 0;
    f.multicast_control = mcast != 0;

    auto cref = read_decimal<GrantRef>(xs, t, fe, "ctrl-ring-ref");
    if (cref) {
      auto cev = read_required<EvtchnPort>(xs, t, fe, "event-channel-ctrl");
      if (!cev) {
        log_.guest("ctrl-ring-ref without a valid event-channel-ctrl");
        return unexpected(cev.error());
      }
      if (!opts_.ctrl_ring) {
        log_.guest("ctrl-ring-ref given but feature-ctrl-ring is not offered");
        return unexpected(EINVAL);
      }
      f.ctrl_ring = true;
      f.ctrl_ring_ref = *cref;
      f.ctrl_port = *cev;
    } else if (cref.error() != ENOENT) {
      log_.guest("malformed ctrl-ring-ref");
      return unexpected(cref.error());
    }
    front_ = std::move(f);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return ok();
}

Status VifDevice::connect() noexcept {
  if (!queues_.empty() || port_) return unexpected(EALREADY);
  if (front_.queues.empty() || workers_.empty()) return unexpected(EINVAL);
  if (!mac_) {
    log_.error("the toolstack's mac key is missing or malformed");
    return unexpected(EINVAL);
  }
  const size_t n = front_.queues.size();
  auto port =
      ports_ ? ports_(addr_, static_cast<uint16_t>(n)) : Result<std::unique_ptr<PacketPort>>(unexpected(ENODEV));
  if (!port) {
    if (port.error() == ENOSPC) {
      log_.error(
          "cannot open the port: all {} DPDK ethdev ports of this process are taken (RTE_MAX_ETHPORTS, fixed "
          "when DPDK is built): one xenpath-netback serves at most that many VIFs",
          DpdkEnv::port_capacity());
    } else {
      log_.error("cannot open the port: {}", error_string(port.error()));
    }
    return unexpected(port.error());
  }
  port_ = std::move(*port);
  if (port_->rx_queues() < n || port_->tx_queues() < n) {
    log_.error("port {} has {}/{} queues, {} needed", port_->name(), port_->rx_queues(), port_->tx_queues(), n);
    return unexpected(EINVAL);
  }
  attach_link();
  std::shared_ptr<VifSiblings> sibs;
  try {
    sibs = std::make_shared<VifSiblings>();
    sibs->entries.resize(n);
    ctrl_stats_.reset();
    stats_.clear();
    for (size_t i = 0; i < n; ++i) stats_.push_back(std::make_unique<VifQueueStats>());
    queues_.resize(n);
    queue_workers_.resize(n);
    if (front_.ctrl_ring) ctrl_stats_ = std::make_unique<NetifCtrlStats>();
  } catch (...) {
    return unexpected(ENOMEM);
  }
  // One multicast list per VIF, whichever queue the guest's requests come on.
  std::shared_ptr<VifMulticast> multicast;
  try {
    multicast = std::make_shared<VifMulticast>();
  } catch (...) {
    return unexpected(ENOMEM);
  }
  // With a control ring and several queues, the guest's hash mapping may
  // send a flow received on one queue to another: one inbox per queue.
  std::vector<SteerInbox*> inboxes;
  if (front_.ctrl_ring && n > 1) {
    for (size_t i = 0; i < n; ++i) {
      auto mb = SteerInbox::create();
      if (!mb) return unexpected(mb.error());
      try {
        inboxes.push_back(mb->get());
        inboxes_.push_back(std::move(*mb));
      } catch (...) {
        return unexpected(ENOMEM);
      }
    }
  }
  // Without feature-rx-notify the frontend does not ask for RX events, so
  // a lack of posted buffers says nothing: Linux then disables stall
  // detection and drains after 30 ms.
  const auto drain = front_.rx_notify ? opts_.rx_drain_timeout : std::chrono::milliseconds(30);
  const auto stall = front_.rx_notify ? opts_.rx_stall_timeout : std::chrono::milliseconds(0);
  for (size_t i = 0; i < n; ++i) {
    NetWorker* w = workers_[i % workers_.size()];
    queue_workers_[i] = w;
    sibs->entries[i].reactor = &w->reactor();
    VifQueue::Config c;
    c.frontend = addr_.frontend_id;
    c.tx_ring_ref = front_.queues[i].tx_ring_ref;
    c.rx_ring_ref = front_.queues[i].rx_ring_ref;
    c.tx_remote_port = front_.queues[i].tx_port;
    c.rx_remote_port = front_.queues[i].rx_port;
    c.port = port_.get();
    c.port_queue = static_cast<uint16_t>(i);
    c.pool = &pool_;
    c.tx_limits = opts_.tx_limits;
    c.zero_copy = opts_.zero_copy;
    c.rx_gro = opts_.rx_gro;
    c.rate = rate_;
    c.rx_csum_offload = front_.csum;
    c.rx_ipv6_csum_offload = front_.ipv6_csum;
    c.rx_sg = front_.sg;
    c.rx_gso_tcpv4 = front_.gso_tcpv4;
    c.rx_gso_tcpv6 = front_.gso_tcpv6;
    c.multicast_control = front_.multicast_control;
    c.port_poll = opts_.port_poll;
    c.rx_backlog = opts_.rx_backlog;
    c.rx_drain_timeout = drain;
    c.rx_stall_timeout = stall;
    c.queue_index = static_cast<uint16_t>(i);
    c.multicast = multicast;
    try {
      c.inboxes = inboxes;
      c.log_prefix =
          n == 1 ? log_.prefix() : fmt::format("{} {}/{} q{}: ", addr_.type, addr_.frontend_id, addr_.devid, i);
    } catch (...) {
      return unexpected(ENOMEM);
    }
    // Started on its worker; the control thread waits in call(), so the
    // queue is recorded here before anything else can reach it.
    const Status st = start_on_worker(*w, queues_[i], [&] {
      auto q = VifQueue::start(*w, c, *stats_[i], [this](int err) {
        // On the worker: the driver moves the device to Closing.
        if (sink_) sink_(addr_, err);
      });
      if (q) sibs->entries[i] = {&w->reactor(), q->get(), true};
      return q;
    });
    if (!st) {
      // The driver calls disconnect(), which stops the queues started so far.
      log_.guest("queue {}: cannot connect: {}", i, error_string(st.error()));
      return st;
    }
  }
  if (front_.ctrl_ring) {
    NetWorker* w = queue_workers_[0];
    NetifCtrlChannel::Config cc;
    cc.frontend = addr_.frontend_id;
    cc.ring_ref = front_.ctrl_ring_ref;
    cc.remote_port = front_.ctrl_port;
    cc.num_queues = static_cast<uint32_t>(n);
    try {
      cc.log_prefix = log_.prefix() + "ctrl: ";
    } catch (...) {
      return unexpected(ENOMEM);
    }
    // Every queue gets the new hash configuration through its reactor.
    auto on_hash = [sibs](std::shared_ptr<const NetifCtrl> snap) {
      for (auto& e : sibs->entries) {
        VifSiblings::Entry* ep = &e;
        ep->reactor->post([sibs, ep, snap] {
          if (ep->alive) ep->queue->set_hash(snap);
        });
      }
    };
    const Status st = start_on_worker(*w, ctrl_, [&] {
      return NetifCtrlChannel::start(*w, cc, *ctrl_stats_, on_hash, [this](int err) {
        if (sink_) sink_(addr_, err);
      });
    });
    if (!st) {
      log_.guest("cannot connect the control ring: {}", error_string(st.error()));
      return st;
    }
  }
  // Queue stop and destruction clear `alive` on their own threads.
  siblings_ = std::move(sibs);
  connected_.store(true, std::memory_order_release);
  log_.info("connected: {} queue(s){}{}, port {}, mac {}{}", n,
            front_.queues[0].tx_port != front_.queues[0].rx_port ? ", split event channels" : "",
            front_.ctrl_ring ? ", control ring" : "", port_->name(), mac_->str(),
            rate_.unlimited() ? "" : fmt::format(", rate {} bytes / {} us", rate_.bytes, rate_.usec));
  return ok();
}

void VifDevice::disconnect() noexcept {
  // The control channel first: it posts to the queues.
  if (ctrl_) {
    queue_workers_[0]->reactor().call([&] { ctrl_.reset(); });
  }
  auto sibs = std::static_pointer_cast<VifSiblings>(siblings_);
  // Halt every queue before waiting for any: a halted queue consumes no
  // more requests, and each gives back what it holds of the others' guest
  // pages (packets looped back to it) before they are waited for.
  std::vector<bool> stopped(queues_.size(), false);
  for (size_t i = 0; i < queues_.size(); ++i) {
    if (!queues_[i]) continue;
    VifQueue* q = queues_[i].get();
    Status st;
    queue_workers_[i]->reactor().call([&] { st = q->stop(); });
    stopped[i] = st.has_value();
  }
  for (size_t i = 0; i < queues_.size(); ++i) {
    if (!queues_[i]) continue;
    NetWorker* w = queue_workers_[i];
    VifQueue* q = queues_[i].get();
    // Guest pages still attached to packets (in the port, in a peer) are
    // read until those packets are freed: wait (bounded) rather than unmap
    // under a reader.
    const auto deadline = std::chrono::steady_clock::now() + opts_.drain_timeout;
    Status st = stopped[i] ? ok() : Status(unexpected(EBUSY));
    while (!st && st.error() == EBUSY && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      w->reactor().call([&] { st = q->stop(); });
    }
    if (!st) {
      log_.error("queue {}: {} guest pages still in use after {} ms; leaving them mapped", i, q->tx_pages_in_flight(),
                 opts_.drain_timeout.count());
      // The queue (and the port its packets may sit in) are kept for good,
      // no longer polled nor bound.
      w->reactor().call([&] {
        if (sibs) sibs->entries[i].alive = false;
        q->abandon();
      });
      (void)queues_[i].release();
      leaked_ = true;
      continue;
    }
    w->reactor().call([&] {
      if (sibs) sibs->entries[i].alive = false;
      queues_[i].reset();
    });
  }
  queues_.clear();
  queue_workers_.clear();
  siblings_.reset();
  if (leaked_) {
    // An abandoned queue may still be pushed to; its packets hold pages.
    for (auto& mb : inboxes_) (void)mb.release();
    (void)port_.release();
  }
  inboxes_.clear();  // what is left in them is freed (their pages come back)
  if (link_attached_ && port_ && opts_.link != nullptr) {
    try {
      opts_.link->detach(link_request());
    } catch (...) {
      log_.warn("no memory to detach {}", port_->kernel_interface());
    }
  }
  link_attached_ = false;
  port_.reset();
  leaked_ = false;
  connected_.store(false, std::memory_order_release);
}

VifLinkRequest VifDevice::link_request() const {
  VifLinkRequest r;
  r.ifname = std::string(port_->kernel_interface());
  r.keys = link_keys_;
  r.domid = addr_.frontend_id;
  r.devid = addr_.devid;
  r.backend_path = addr_.backend_path;
  return r;
}

void VifDevice::attach_link() noexcept {
  // Ports without a dom0 interface (the simulated host's rings) have
  // nothing to attach.
  if (opts_.link == nullptr || port_->kernel_interface().empty()) return;
  Status st = ok();
  try {
    st = opts_.link->attach(link_request());
  } catch (...) {
    st = unexpected(ENOMEM);
  }
  link_attached_ = st.has_value();
  if (!st) {
    log_.error("{}: cannot attach to bridge '{}' ({} failed: {}); the VIF runs, dom0's side is not plugged in",
               port_->kernel_interface(), link_keys_.bridge, opts_.link->mode(), error_string(st.error()));
  }
}

void VifDevice::describe(nlohmann::json& v, bool detail) const {
  const VifDevice& d = *this;
  v["connected"] = d.connected();
  if (d.mac()) v["mac"] = d.mac()->str();
  if (!d.rate().unlimited()) v["rate"] = {{"bytes", d.rate().bytes}, {"usec", d.rate().usec}};
  if (d.connected()) v["multicast_control"] = d.frontend().multicast_control;
  nlohmann::json qs = nlohmann::json::array();
  for (size_t i = 0; d.connected() && i < d.queue_count(); ++i) {
    const VifQueueStats& s = d.queue_stats(i);
    qs.push_back({{"worker", queue_workers_[i]->reactor().name()},
                  {"tx_packets", s.tx_packets.get()},
                  {"tx_bytes", s.tx_bytes.get()},
                  {"tx_dropped", s.tx_dropped.get()},
                  {"tx_port_dropped", s.tx_port_dropped.get()},
                  {"tx_rate_limited", s.tx_rate_limited.get()},
                  {"tx_credit_timer", s.tx_credit_timer.get()},
                  {"tx_multicast", s.tx_multicast.get()},
                  {"tx_headers_pulled", s.tx_headers_pulled.get()},
                  {"tx_map_calls", s.tx_map_calls.get()},
                  {"tx_mapped_pages", s.tx_mapped_pages.get()},
                  {"tx_copy_calls", s.tx_copy_calls.get()},
                  {"tx_copied_bytes", s.tx_copied_bytes.get()},
                  {"rx_packets", s.rx_packets.get()},
                  {"rx_bytes", s.rx_bytes.get()},
                  {"rx_dropped", s.rx_dropped.get()},
                  {"rx_expired", s.rx_expired.get()},
                  {"rx_stall_dropped", s.rx_stall_dropped.get()},
                  {"rx_stalls", s.rx_stalls.get()},
                  {"rx_stalled", s.rx_stalled.get() != 0},
                  {"rx_copy_failures", s.rx_copy_failures.get()},
                  {"rx_gro_packets", s.rx_gro_packets.get()},
                  {"rx_gro_merged", s.rx_gro_merged.get()},
                  {"halted", s.tx_ring.halted.get() != 0 || s.rx_ring.halted.get() != 0}});
  }
  v["queues"] = std::move(qs);
  if (const NetifCtrlStats* c = d.ctrl_stats(); c != nullptr && d.connected()) {
    v["ctrl"] = {{"requests", c->ring.requests.get()}, {"hash_updates", c->hash_updates.get()}};
  }
  if (port_) v["port"] = port_->name();
  if (port_ && !port_->kernel_interface().empty()) v["interface"] = std::string(port_->kernel_interface());
  if (!link_keys_.bridge.empty()) v["bridge"] = link_keys_.bridge;
  if (!detail) return;
  if (!d.connected()) return;
  const VifFrontendConfig& f = front_;
  v["features"] = {{"sg", f.sg},
                   {"gso_tcpv4", f.gso_tcpv4},
                   {"gso_tcpv6", f.gso_tcpv6},
                   {"csum_offload", f.csum},
                   {"ipv6_csum_offload", f.ipv6_csum},
                   {"rx_notify", f.rx_notify},
                   {"multicast_control", f.multicast_control},
                   {"ctrl_ring", f.ctrl_ring},
                   {"rx_gro", opts_.rx_gro},
                   {"tx_copy_below", opts_.tx_limits.copy_below}};
  nlohmann::json rings = nlohmann::json::array();
  for (size_t i = 0; i < f.queues.size(); ++i) {
    const auto& q = f.queues[i];
    rings.push_back({{"queue", i},
                     {"tx_ring_ref", q.tx_ring_ref},
                     {"rx_ring_ref", q.rx_ring_ref},
                     {"tx_event_channel", q.tx_port},
                     {"rx_event_channel", q.rx_port},
                     {"split_event_channels", q.tx_port != q.rx_port}});
  }
  v["rings"] = std::move(rings);
}

namespace {
constexpr std::array<std::string_view, 1> kVifParams = {"rate"};
}  // namespace

std::span<const std::string_view> VifDevice::param_keys() const noexcept { return kVifParams; }

Result<std::string> VifDevice::set_param(XenStore& xs, std::string_view key, std::string_view value) noexcept {
  if (key != "rate") return unexpected(ENOENT);
  try {
    // Through the backend's "rate" key, as the toolstack sets it: the
    // watch applies it to every queue (backend_key_changed), and it stays
    // what xenstore says, so a reconnect or a restarted daemon keeps it.
    const std::string path = addr_.backend_path + "/rate";
    if (value == "unlimited" || value == "off") {
      const Status st = xs.rm(kXsNoTxn, path);
      if (!st && st.error() != ENOENT) return unexpected(st.error());
      return std::string("rate unlimited");
    }
    const auto spec = parse_rate(value);
    if (!spec || spec->usec == 0) return unexpected(EINVAL);
    XP_TRY(xs.write(kXsNoTxn, path, value));
    return fmt::format("rate {} bytes / {} us ({:.1f} MB/s per queue)", spec->bytes, spec->usec,
                       static_cast<double>(spec->bytes) / static_cast<double>(spec->usec));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void VifDevice::backend_key_changed(XenStore& xs, std::string_view key) noexcept {
  if (key != "rate") return;
  RateSpec spec;  // absent or malformed: unlimited, as xen_net_read_rate
  auto s = xs.read(kXsNoTxn, addr_.backend_path + "/rate");
  if (s) {
    if (auto r = parse_rate(*s)) spec = *r;
    else log_.warn("failed to parse the rate key; traffic unlimited");
  } else if (s.error() != ENOENT) {
    return;
  }
  if (spec == rate_) return;
  rate_ = spec;
  auto sibs = std::static_pointer_cast<VifSiblings>(siblings_);
  if (!sibs) return;  // not connected: the next connect uses it
  log_.info("rate changed: {}",
            spec.unlimited() ? std::string("unlimited") : fmt::format("{} bytes / {} us", spec.bytes, spec.usec));
  for (auto& e : sibs->entries) {
    VifSiblings::Entry* ep = &e;
    ep->reactor->post([sibs, ep, spec] {
      if (ep->alive) ep->queue->set_rate(spec);
    });
  }
}

namespace {
constexpr std::string_view kMulticastControlKey = "request-multicast-control";
constexpr std::array<std::string_view, 1> kFrontendWatches = {kMulticastControlKey};
}  // namespace

std::span<const std::string_view> VifDevice::frontend_watches() const noexcept { return kFrontendWatches; }

void VifDevice::frontend_key_changed(XenStore& xs, std::string_view key) noexcept {
  if (key != kMulticastControlKey) return;
  // Absent or not a number: off, as xenbus_read_unsigned(..., 0).
  auto v = read_flag(xs, kXsNoTxn, addr_.frontend_path, kMulticastControlKey, 0);
  if (!v) return;  // the store failed: keep what is in force
  const bool on = *v != 0;
  if (on == front_.multicast_control) return;
  front_.multicast_control = on;
  auto sibs = std::static_pointer_cast<VifSiblings>(siblings_);
  if (!sibs) return;  // not connected: the next connect reads it again
  log_.info("multicast control {}", on ? "on" : "off");
  for (auto& e : sibs->entries) {
    VifSiblings::Entry* ep = &e;
    ep->reactor->post([sibs, ep, on] {
      if (ep->alive) ep->queue->set_multicast_control(on);
    });
  }
}

// ---------------------------------------------------------------------------

Result<std::unique_ptr<BackendDevice>> VifDeviceType::create(const DeviceAddress& addr, XenStore& xs,
                                                             XsTxn t) noexcept {
  if (workers_.empty()) return unexpected(ENODEV);
  try {
    const std::string log_prefix = fmt::format("{} {}/{}: ", addr.type, addr.frontend_id, addr.devid);
    DeviceLog log(log_prefix);
    XP_ASSIGN_OR_RETURN(const std::string mac_str, xs.read(t, addr.backend_path + "/mac"));
    const std::optional<MacAddr> mac = parse_vif_mac(mac_str);
    if (!mac) log.error("malformed mac key; the device will not connect");
    RateSpec rate;
    auto rate_str = xs.read(t, addr.backend_path + "/rate");
    if (rate_str) {
      if (auto r = parse_rate(*rate_str)) {
        rate = *r;
      } else {
        log.warn("failed to parse the rate key; traffic unlimited");
      }
    } else if (rate_str.error() != ENOENT) {
      return unexpected(rate_str.error());
    }
    std::string link_warn;
    XP_ASSIGN_OR_RETURN(VifLinkKeys link_keys, read_vif_link_keys(xs, t, addr.backend_path, &link_warn));
    if (!link_warn.empty()) log.warn("{}", link_warn);
    // Queues of successive devices start on successive workers.
    std::vector<NetWorker*> order;
    const size_t base = next_++;
    for (size_t i = 0; i < workers_.size(); ++i) order.push_back(workers_[(base + i) % workers_.size()]);
    return std::unique_ptr<BackendDevice>(
        new VifDevice(addr, opts_, std::move(order), pool_, ports_, mac, rate, sink_, std::move(link_keys)));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

}  // namespace xenpath
