#include "blkback/blk_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <nlohmann/json.hpp>
#include <thread>

#include "blkback/image_open.h"
#include "cache/block_cache.h"
#include "common/xenbus/keys.h"

namespace xenpath {

namespace {

// Store content in a log line: bounded, printable ASCII only.
std::string printable(std::string_view s, size_t max = 64) {
  std::string out;
  for (char c : s.substr(0, max)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  if (s.size() > max) out += "...";
  return out;
}

// An optional flag: absent or not a number means 0, as Linux's
// xenbus_read_unsigned() treats it.
Result<uint32_t> read_flag(XenStore& xs, XsTxn t, std::string_view dir, std::string_view key, uint32_t dflt) {
  auto v = read_decimal<uint32_t>(xs, t, dir, key);
  if (v) return *v;
  if (v.error() == ENOENT || v.error() == EINVAL) return dflt;
  return unexpected(v.error());
}

}  // namespace

Result<VbdParams> parse_vbd_params(std::string_view params) noexcept {
  if (params.empty()) return unexpected(ENOENT);  // an empty drive (cdrom without media)
  VbdParams out;
  const size_t colon = params.find(':');
  try {
    if (colon != std::string_view::npos && params[0] != '/') {
      const std::string_view fmt = params.substr(0, colon);
      const std::string_view rest = params.substr(colon + 1);
      if (fmt == "raw" || fmt == "aio" || fmt == "file" || fmt == "phy") {
        out.format = "raw";
      } else if (fmt == "vhd") {
        out.format = "vhd";
      } else if (fmt == "qcow" || fmt == "qcow2" || fmt == "vhdx" || fmt == "qed") {
        return unexpected(EOPNOTSUPP);  // a format this backend does not serve (yet)
      } else {
        return unexpected(EINVAL);
      }
      if (rest.empty()) return unexpected(ENOENT);
      out.path = std::string(rest);
    } else {
      out.path = std::string(params);
      out.format = "auto";
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  if (out.path.empty() || out.path[0] != '/') return unexpected(EINVAL);
  return out;
}

Result<QosLimits> read_vbd_qos(XenStore& xs, XsTxn t, std::string_view backend, DeviceLog& log) noexcept {
  QosLimits l;
  try {
    for (std::string_view key : kQosKeys) {
      auto v = xs.read(t, fmt::format("{}/{}", backend, key));
      if (!v) {
        if (v.error() == ENOENT) continue;
        return unexpected(v.error());
      }
      auto n = parse_qos_value(*v);
      if (!n) {
        log.warn("{} '{}' is not a number: unlimited", key, printable(*v));
        continue;
      }
      *qos_field(l, key) = *n;
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return l;
}

// ---------------------------------------------------------------------------

VbdDevice::VbdDevice(const DeviceAddress& addr, const VbdOptions& opts, std::vector<BlkWorker*> workers,
                     std::unique_ptr<Image> image, bool read_only, bool cdrom, bool discard_enable,
                     VbdErrorSink sink) noexcept
    : addr_(addr),
      opts_(opts),
      workers_(std::move(workers)),
      image_(std::move(image)),
      cdrom_(cdrom),
      sink_(std::move(sink)),
      log_(fmt::format("{} {}/{}: ", addr.type, addr.frontend_id, addr.devid)),
      max_queues_(opts.max_queues != 0 ? opts.max_queues
                                       : static_cast<unsigned>(std::max<size_t>(workers_.size(), 1))) {
  const ImageInfo& info = image_->info();
  // The image may allow fewer queues (a writable VHD: one).
  if (info.max_queues != 0) max_queues_ = std::min(max_queues_, info.max_queues);
  limits_.sectors = info.size_bytes / 512;
  limits_.sector_size = 512;
  limits_.align_sectors = std::max<uint32_t>(std::max(info.logical_block_size, info.memory_align), 512) / 512;
  limits_.read_only = read_only || info.read_only;
  limits_.max_indirect_segments = std::min(opts_.max_indirect_segments, kBlkMaxIndirectSegmentsAbi);
  if (!limits_.read_only) {
    limits_.features = kBlkFeatureFlush | kBlkFeatureBarrier;
    if (discard_enable && info.discard) {
      limits_.features |= kBlkFeatureDiscard;
      if (info.secure_discard) limits_.features |= kBlkFeatureDiscardSecure;
    }
  }
  if (!discard_enable) limits_.features &= ~static_cast<uint32_t>(kBlkFeatureDiscard);
}

VbdDevice::~VbdDevice() { disconnect(); }

void VbdDevice::guard_probed_raw(std::unique_ptr<ProbeGuard> guard) noexcept { guard_ = std::move(guard); }

Status VbdDevice::write_backend_features(XenStore& xs, XsTxn t) noexcept {
  const std::string& b = addr_.backend_path;
  auto w = [&](std::string_view key, uint64_t value) { return write_decimal(xs, t, b, key, value); };
  const ImageInfo& info = image_->info();
  if (limits_.max_indirect_segments != 0) XP_TRY(w("feature-max-indirect-segments", limits_.max_indirect_segments));
  XP_TRY(w("max-ring-page-order", opts_.max_ring_order));
  XP_TRY(w("multi-queue-max-queues", max_queues_));
  XP_TRY(w("feature-persistent", opts_.persistent ? 1 : 0));
  XP_TRY(w("feature-flush-cache", limits_.has(kBlkFeatureFlush) ? 1 : 0));
  XP_TRY(w("feature-barrier", limits_.has(kBlkFeatureBarrier) ? 1 : 0));
  if (limits_.has(kBlkFeatureDiscard)) {
    XP_TRY(w("discard-granularity", info.discard_granularity));
    XP_TRY(w("discard-alignment", info.discard_alignment));
    XP_TRY(w("discard-secure", limits_.has(kBlkFeatureDiscardSecure) ? 1 : 0));
    XP_TRY(w("feature-discard", 1));
  } else if (!limits_.read_only) {
    XP_TRY(w("feature-discard", 0));
  }
  XP_TRY(w("sectors", limits_.sectors));
  XP_TRY(w("info", (cdrom_ ? VDISK_CDROM : 0) | (limits_.read_only ? VDISK_READONLY : 0)));
  XP_TRY(w("sector-size", info.logical_block_size));
  XP_TRY(w("physical-sector-size", info.physical_block_size));
  return ok();
}

Status VbdDevice::read_frontend(XenStore& xs, XsTxn t) noexcept {
  // May run again when the transaction is retried: store only what is read.
  const std::string& fe = addr_.frontend_path;
  try {
    auto proto = xs.read(t, fe + "/protocol");
    if (!proto && proto.error() != ENOENT) return unexpected(proto.error());
    auto p = parse_blk_protocol(proto ? std::optional<std::string_view>(*proto) : std::nullopt);
    if (!p) {
      log_.guest("unknown frontend protocol '{}'", printable(*proto));
      return unexpected(p.error());
    }
    protocol_ = *p;
    XP_ASSIGN_OR_RETURN(const uint32_t pers, read_flag(xs, t, fe, "feature-persistent", 0));
    persistent_ = opts_.persistent && pers == 1;

    XP_ASSIGN_OR_RETURN(const uint32_t nqueues, read_queue_count(xs, t, fe, max_queues_, log_));
    // ring-page-order sits at the top even with several queues; with it
    // (even 0) the references are ring-ref0..N-1, without it one ring-ref.
    uint32_t order = 0;
    bool multi_ref = false;
    auto ord = read_decimal<uint32_t>(xs, t, fe, "ring-page-order");
    if (ord) {
      order = *ord;
      multi_ref = true;
    } else if (ord.error() != ENOENT) {
      log_.guest("malformed ring-page-order");
      return unexpected(EINVAL);
    }
    if (order > opts_.max_ring_order) {
      log_.guest("ring-page-order {} above the offered {}", order, opts_.max_ring_order);
      return unexpected(EINVAL);
    }
    std::vector<FrontQueue> queues(nqueues);
    for (uint32_t q = 0; q < nqueues; ++q) {
      const std::string dir = nqueues == 1 ? fe : fmt::format("{}/queue-{}", fe, q);
      FrontQueue& fq = queues[q];
      for (uint32_t i = 0; i < (1u << order); ++i) {
        auto ref = read_decimal<GrantRef>(xs, t, dir, multi_ref ? fmt::format("ring-ref{}", i) : "ring-ref");
        if (!ref) {
          log_.guest("queue {}: missing or malformed ring reference {}", q, i);
          return unexpected(ref.error() == ENOENT ? EINVAL : ref.error());
        }
        fq.refs.push_back(*ref);
      }
      auto port = read_decimal<EvtchnPort>(xs, t, dir, "event-channel");
      if (!port) {
        log_.guest("queue {}: missing or malformed event-channel", q);
        return unexpected(port.error() == ENOENT ? EINVAL : port.error());
      }
      fq.port = *port;
    }
    front_ = std::move(queues);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return ok();
}

Status VbdDevice::connect() noexcept {
  if (!queues_.empty()) return unexpected(EALREADY);
  if (front_.empty() || workers_.empty()) return unexpected(EINVAL);
  const size_t n = front_.size();
  try {
    stats_.clear();
    for (size_t i = 0; i < n; ++i) stats_.push_back(std::make_unique<VbdQueueStats>());
    queues_.resize(n);
    queue_workers_.resize(n);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  for (size_t i = 0; i < n; ++i) {
    BlkWorker* w = workers_[i % workers_.size()];
    queue_workers_[i] = w;
    VbdQueue::Config c;
    c.frontend = addr_.frontend_id;
    c.protocol = protocol_;
    c.remote_port = front_[i].port;
    c.limits = limits_;
    c.persistent = persistent_;
    c.persistent_max_pages = opts_.persistent_max_pages;
    c.probe_guard = guard_.get();
    c.qos = qos_;
    c.qos_queues = static_cast<unsigned>(n);
    try {
      c.ring_refs = front_[i].refs;
      c.log_prefix =
          n == 1 ? log_.prefix() : fmt::format("{} {}/{} q{}: ", addr_.type, addr_.frontend_id, addr_.devid, i);
    } catch (...) {
      return unexpected(ENOMEM);
    }
    VbdQueueStats& stats = *stats_[i];
    const Status st = start_on_worker(*w, queues_[i], [&] {
      return VbdQueue::start(*w, *image_, c, stats, [this](int err) {
        // On the worker: the driver moves the device to Closing.
        if (sink_) sink_(addr_, err);
      });
    });
    if (!st) {
      log_.guest("queue {}: cannot connect: {}", i, error_string(st.error()));
      return st;  // the driver calls disconnect(), which stops the queues started so far
    }
  }
  connected_.store(true, std::memory_order_release);
  log_.info("connected: {} queue(s), {}, {} ring page(s){}{}", n, blk_protocol_name(protocol_), front_[0].refs.size(),
            persistent_ ? ", persistent grants" : "", qos_.limited() ? ", QoS " + qos_describe(qos_) : "");
  return ok();
}

void VbdDevice::disconnect() noexcept {
  for (size_t i = 0; i < queues_.size(); ++i) {
    if (!queues_[i]) continue;
    BlkWorker* w = queue_workers_[i];
    VbdQueue* q = queues_[i].get();
    // I/O in flight owns guest pages until the kernel completes it: wait
    // (bounded) rather than unmap under it.
    const auto deadline = std::chrono::steady_clock::now() + opts_.drain_timeout;
    Status st;
    for (;;) {
      w->reactor().call([&] { st = q->stop(); });
      if (st || st.error() != EBUSY || std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!st) {
      // Never unmap pages the kernel may still write: keep the queue (and
      // its mappings) for good; this is a leak, reported loudly.
      log_.error("queue {}: I/O still in flight after {} ms; leaving it mapped", i, opts_.drain_timeout.count());
      (void)queues_[i].release();
      continue;
    }
    w->reactor().call([&] { queues_[i].reset(); });
  }
  queues_.clear();
  queue_workers_.clear();
  connected_.store(false, std::memory_order_release);
}

// ---------------------------------------------------------------------------

Result<std::unique_ptr<BackendDevice>> VbdDeviceType::create(const DeviceAddress& addr, XenStore& xs,
                                                             XsTxn t) noexcept {
  if (workers_.empty()) return unexpected(ENODEV);
  try {
    // Missing toolstack keys: not ready yet (the driver retries). From here
    // on an error is fatal for the device (error node + Closing).
    auto params = xs.read(t, addr.backend_path + "/params");
    if (!params) return unexpected(params.error() == ENOENT ? EAGAIN : params.error());
    auto mode = xs.read(t, addr.backend_path + "/mode");
    if (!mode) return unexpected(mode.error() == ENOENT ? EAGAIN : mode.error());
    auto parsed = parse_vbd_params(*params);
    if (!parsed) return unexpected(parsed.error() == ENOENT ? EAGAIN : parsed.error());  // empty: no media yet
    VbdParams p = *parsed;
    if (p.format == "auto" && !opts_.probe_format) p.format = "raw";
    const bool read_only = mode->find('w') == std::string::npos;
    XP_ASSIGN_OR_RETURN(const uint32_t discard, read_flag(xs, t, addr.backend_path, "discard-enable", 1));
    XP_ASSIGN_OR_RETURN(const uint32_t cached, read_flag(xs, t, addr.backend_path, "cache", 1));
    DeviceLog qlog(fmt::format("vbd {}/{}: ", addr.frontend_id, addr.devid));
    XP_ASSIGN_OR_RETURN(const QosLimits qos, read_vbd_qos(xs, t, addr.backend_path, qlog));
    auto devtype = xs.read(t, addr.frontend_path + "/device-type");
    const bool cdrom = devtype && *devtype == "cdrom";

    const bool ro = read_only || cdrom;
    Result<std::unique_ptr<Image>> opened = unexpected(EIO);
    std::string why;
    bool probed_raw = false;
    if (opts_.open_image) {
      opened = opts_.open_image(p, ro);
    } else {
      opened = open_vbd_image(
          p, ImageOpenOptions{.read_only = ro, .direct = opts_.direct, .cache = cached != 0 ? opts_.cache : nullptr},
          &why, &probed_raw);
    }
    if (!opened) {
      DeviceLog(fmt::format("vbd {}/{}: ", addr.frontend_id, addr.devid))
          .warn("cannot open image {}: {}{}{}", p.path, error_string(opened.error()), why.empty() ? "" : ": ",
                printable(why, 512));
      // ENOENT would read as "not ready yet" to the driver.
      return unexpected(opened.error() == ENOENT ? ENODEV : opened.error());
    }
    std::unique_ptr<Image> image = std::move(*opened);
    const ImageInfo& info = image->info();
    if (std::max(info.logical_block_size, info.memory_align) > kPageSize) return unexpected(EINVAL);

    // Queues of successive devices start on successive workers.
    std::vector<BlkWorker*> order;
    const size_t base = next_++;
    for (size_t i = 0; i < workers_.size(); ++i) order.push_back(workers_[(base + i) % workers_.size()]);
    auto dev = std::unique_ptr<VbdDevice>(
        new VbdDevice(addr, opts_, std::move(order), std::move(image), ro, cdrom, discard != 0, sink_));
    if (probed_raw && !dev->limits().read_only) {
      // What the guest can write, in the blocks its requests come in.
      const VbdLimits& l = dev->limits();
      auto guard = probe_guard_for(p.path, l.sectors * l.sector_size, l.align_sectors * l.sector_size);
      if (!guard) {
        DeviceLog(fmt::format("vbd {}/{}: ", addr.frontend_id, addr.devid))
            .warn("cannot read the end of {} to guard its format: {}", p.path, error_string(guard.error()));
        return unexpected(guard.error() == ENOENT ? ENODEV : guard.error());
      }
      dev->guard_probed_raw(std::move(*guard));
    }
    dev->apply_qos(qos);
    return std::unique_ptr<BackendDevice>(std::move(dev));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::string> VbdDevice::set_cache(XenStore& xs, std::string_view value) noexcept {
  bool on = false;
  if (value == "on" || value == "1") {
    on = true;
  } else if (value != "off" && value != "0") {
    return unexpected(EINVAL);
  }
  try {
    // The key first: if it cannot be written nothing changed. Then the
    // image's switch, directly: the channels read it per piece (a relaxed
    // flag), so no worker needs a message; a read already in the cache
    // finishes there (its pins and fills complete as usual).
    XP_TRY(xs.write(kXsNoTxn, addr_.backend_path + "/cache", on ? "1" : "0"));
    const bool cached = image_->set_cache_enabled(on);
    if (cached)
      return fmt::format("cache {}: the VBD's reads of its base levels {} the shared cache now", on ? "on" : "off",
                         on ? "go through" : "go around");
    if (on && opts_.cache != nullptr) {
      return std::string(
          "cache on: written to the backend key; applies when the device is next created (its image "
          "was opened without the cache)");
    }
    return fmt::format("cache {}: written to the backend key; this image has no level in the cache{}",
                       on ? "on" : "off", opts_.cache == nullptr ? " (the daemon runs without one)" : "");
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void VbdDevice::describe(nlohmann::json& e, bool detail) const {
  const bool up = connected();
  const size_t queues = up ? queue_count() : 0;
  e["connected"] = up;
  e["image"] = image_->path();
  e["sectors"] = image_->info().size_bytes / 512;
  e["read_only"] = limits_.read_only;
  uint64_t reads = 0, writes = 0, read_bytes = 0, write_bytes = 0, flushes = 0, barriers = 0, discards = 0;
  uint64_t errors = 0, in_flight = 0, halted = 0, qos_delayed = 0, qos_throttled_ns = 0;
  nlohmann::json per_queue = nlohmann::json::array();
  nlohmann::json latency = {{"read", nullptr}, {"write", nullptr}, {"flush", nullptr}};
  CacheCounters cache_use;  // the queues' channels' share of the shared cache's counters
  for (size_t q = 0; q < queues; ++q) {
    const VbdQueueStats& s = *stats_[q];
    reads += s.reads.get();
    writes += s.writes.get();
    read_bytes += s.read_bytes.get();
    write_bytes += s.write_bytes.get();
    flushes += s.flushes.get();
    barriers += s.barriers.get();
    discards += s.discards.get();
    errors += s.errors.total();
    in_flight += s.in_flight.get();
    halted += s.ring.halted.get();
    qos_delayed += s.qos_delayed.get();
    qos_throttled_ns += s.qos_throttled_ns.get();
    nlohmann::json pq = {{"queue", q},
                         {"worker", queue_workers_[q]->reactor().name()},
                         {"requests", s.ring.requests.get()},
                         {"reads", s.reads.get()},
                         {"writes", s.writes.get()},
                         {"read_bytes", s.read_bytes.get()},
                         {"write_bytes", s.write_bytes.get()},
                         {"flushes", s.flushes.get()},
                         {"barriers", s.barriers.get()},
                         {"discards", s.discards.get()},
                         {"errors", s.errors.total()},
                         {"in_flight", s.in_flight.get()},
                         {"qos_delayed", s.qos_delayed.get()},
                         {"qos_throttled_seconds", static_cast<double>(s.qos_throttled_ns.get()) / 1e9},
                         {"halted", s.ring.halted.get() != 0}};
    pq["latency"] = {{"read", latency_json(s.read_latency)},
                     {"write", latency_json(s.write_latency)},
                     {"flush", latency_json(s.flush_latency)}};
    for (const char* op : {"read", "write", "flush"}) add_latency_json(latency[op], pq["latency"][op]);
    // The channel lives with the queue, which only this thread's
    // connect/disconnect creates and destroys.
    if (const CacheStatStripe* cu = queues_[q] ? queues_[q]->image_channel().cache_use() : nullptr)
      cu->add_to(cache_use);
    if (detail) {
      pq["indirect"] = s.indirect.get();
      pq["discard_bytes"] = s.discard_bytes.get();
      pq["batches"] = s.ring.batches.get();
      pq["notifications_sent"] = s.ring.notifications_sent.get();
      pq["events_received"] = s.ring.events_received.get();
      pq["ring_order"] = std::countr_zero(front_[q].refs.size());
      pq["event_channel"] = front_[q].port;
      pq["map_calls"] = s.map_calls.get();
      pq["map_fallbacks"] = s.map_fallbacks.get();
      pq["barrier_drains"] = s.barrier_drains.get();
      // The table's own single-writer counters; the queue (and its table)
      // is only created and destroyed by this thread's connect/disconnect.
      if (const PersistentGrants* pg = queues_[q] ? queues_[q]->persistent() : nullptr) {
        const PersistentGrantStats& g = pg->stats();
        pq["persistent_grants"] = {
            {"entries", g.live_entries.get()}, {"mapped_pages", g.live_pages.get()}, {"hits", g.hits.get()},
            {"misses", g.misses.get()},        {"evictions", g.evictions.get()},     {"overflows", g.overflows.get()}};
      }
      nlohmann::json reasons = nlohmann::json::object();
      for (size_t r = 1; r < static_cast<size_t>(BlkReason::kCount); ++r) {
        if (const uint64_t n = s.errors.by_reason[r].get()) reasons[std::string(blk_reason_name(BlkReason(r)))] = n;
      }
      pq["errors_by_reason"] = std::move(reasons);
    }
    per_queue.push_back(std::move(pq));
  }
  e["queues"] = queues;
  e["reads"] = reads;
  e["writes"] = writes;
  e["read_bytes"] = read_bytes;
  e["write_bytes"] = write_bytes;
  e["flushes"] = flushes;
  e["barriers"] = barriers;
  e["discards"] = discards;
  e["errors"] = errors;
  e["in_flight"] = in_flight;
  e["halted"] = halted;
  // The limits in force (0: unlimited) and what they cost the guest: the
  // requests that waited for credit and the time a queue's head waited.
  e["qos"] = {{"read_iops", qos_.read_iops},
              {"write_iops", qos_.write_iops},
              {"read_bps", qos_.read_bps},
              {"write_bps", qos_.write_bps},
              {"burst_ms", qos_.burst_ms != 0 ? qos_.burst_ms : kQosDefaultBurstMs},
              {"delayed", qos_delayed},
              {"throttled_seconds", static_cast<double>(qos_throttled_ns) / 1e9}};
  e["per_queue"] = std::move(per_queue);
  e["latency"] = std::move(latency);
  nlohmann::json cache = cache_use;
  cache["enabled"] = image_->cache_enabled();
  e["cache"] = std::move(cache);
  if (!detail) return;
  e["features"] = {{"protocol", up ? std::string(blk_protocol_name(protocol_)) : std::string()},
                   {"persistent", up && persistent_},
                   {"max_indirect_segments", limits_.max_indirect_segments},
                   {"flush_cache", limits_.has(kBlkFeatureFlush)},
                   {"barrier", limits_.has(kBlkFeatureBarrier)},
                   {"discard", limits_.has(kBlkFeatureDiscard)},
                   {"discard_secure", limits_.has(kBlkFeatureDiscardSecure)},
                   {"sector_size", limits_.sector_size},
                   {"cdrom", cdrom_},
                   {"max_queues", max_queues_},
                   {"max_ring_page_order", opts_.max_ring_order}};
}

}  // namespace xenpath

namespace xenpath {

namespace {
// The QoS keys, then the cache switch.
constexpr auto kVbdParams = [] {
  std::array<std::string_view, std::size(kQosKeys) + 1> a{};
  for (size_t i = 0; i < std::size(kQosKeys); ++i) a[i] = kQosKeys[i];
  a.back() = "cache";
  return a;
}();
}  // namespace

std::span<const std::string_view> VbdDevice::param_keys() const noexcept { return kVbdParams; }

Result<std::string> VbdDevice::set_param(XenStore& xs, std::string_view key, std::string_view value) noexcept {
  if (key == "cache") return set_cache(xs, value);
  QosLimits next = qos_;
  uint64_t* field = qos_field(next, key);
  if (field == nullptr) return unexpected(ENOENT);
  XP_ASSIGN_OR_RETURN(*field, parse_qos_value(value));
  try {
    // Through the backend key, as a toolstack sets it: the watch applies it
    // (backend_key_changed), and xenstore keeps it for a reconnect or a
    // restarted daemon. 0 removes the key (unlimited, as absent).
    const std::string path = fmt::format("{}/{}", addr_.backend_path, key);
    if (*field == 0) {
      const Status st = xs.rm(kXsNoTxn, path);
      if (!st && st.error() != ENOENT) return unexpected(st.error());
    } else {
      XP_TRY(xs.write(kXsNoTxn, path, std::to_string(*field)));
    }
    return fmt::format("{}={}: QoS {}", key, *field, qos_describe(next));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void VbdDevice::backend_key_changed(XenStore& xs, std::string_view key) noexcept {
  QosLimits probe;
  if (qos_field(probe, key) == nullptr) return;
  auto l = read_vbd_qos(xs, kXsNoTxn, addr_.backend_path, log_);
  if (!l) return;  // the store failed: keep what is in force
  if (*l == qos_) return;
  log_.info("QoS: {}", qos_describe(*l));
  apply_qos(*l);
}

void VbdDevice::apply_qos(const QosLimits& limits) noexcept {
  qos_ = limits;
  const auto n = static_cast<unsigned>(queues_.size());
  for (size_t i = 0; i < queues_.size(); ++i) {
    VbdQueue* q = queues_[i].get();
    if (q != nullptr) queue_workers_[i]->reactor().call([q, limits, n] { q->set_qos(limits, n); });
  }
}

}  // namespace xenpath
