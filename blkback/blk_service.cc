#include "blkback/blk_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "common/log.h"

namespace xenpath {

DaemonCli BlkbackService::cli_defaults() {
  DaemonCli c;
  c.daemon.name = "xenpath-blkback";
  return c;
}

void BlkbackService::add_cli(CLI::App& app, Options& opts) {
  app.add_option("--backend-type", opts.type_name,
                 "xenstore device type to serve: vbd (kernel blkback's) or qdisk (QEMU's), or another name");
  app.add_option("--max-queues", opts.max_queues, "multi-queue-max-queues (0: one per worker)");
  app.add_option("--max-ring-page-order", opts.max_ring_order, "max-ring-page-order")->check(CLI::Range(0, 4));
  app.add_option("--max-indirect-segments", opts.max_indirect_segments, "feature-max-indirect-segments")
      ->check(CLI::Range(0, 4096));
  app.add_flag("!--no-persistent", opts.persistent, "do not offer feature-persistent");
  app.add_flag("!--no-probe-format", opts.probe_format,
               "serve a bare path in params as raw (VHD only with \"vhd:\"), without reading the file to tell");
  opts.cache_mib = kDefaultCacheMib;
  app.add_option("--cache-mib", opts.cache_mib,
                 "shared read cache over base images (VHD parents), MiB of memory allocated at start; 0: off")
      ->capture_default_str();
  app.add_option("--cache-block-kib", opts.cache_block_kib, "cache block size, KiB (a power of two, 4..2048)")
      ->check(CLI::Range(4, 2048))
      ->capture_default_str();
}

Result<std::unique_ptr<BlkbackService>> BlkbackService::create(BackendDaemon& daemon, const VbdOptions& opts) noexcept {
  try {
    std::unique_ptr<BlkbackService> s(new BlkbackService());
    s->type_name_ = opts.type_name;
    VbdOptions vo = opts;
    if (opts.cache_mib != 0) {
      BlockCache::Options co;
      co.budget_bytes = opts.cache_mib << 20;
      co.block_size = opts.cache_block_kib << 10;
      auto cache = BlockCache::create(co);
      if (!cache) {
        spdlog::error("cache of {} MiB in {} KiB blocks: {}", opts.cache_mib, opts.cache_block_kib,
                      error_string(cache.error()));
        return unexpected(cache.error());
      }
      s->cache_ = std::move(*cache);
      vo.cache = s->cache_.get();
    }
    XP_TRY(s->workers_.open(daemon.workers(), daemon.platform()));
    BackendDaemon* d = &daemon;
    XP_TRY(daemon.add_type(std::make_unique<VbdDeviceType>(s->workers(), vo, daemon.device_error_sink())));
    const BlkbackService* self = s.get();
    daemon.add_stats([self, d](nlohmann::json& j) { self->add_stats(j, d->driver()); });
    daemon.add_metrics(&BlkbackService::add_metrics);
    daemon.add_method("cache", [self, d](const nlohmann::json& params, const ControlServer::Responder& r) {
      self->cache_method(params, r, d->driver());
    });
    return s;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void BlkbackService::add_stats(nlohmann::json& j, const BackendDriver& driver) const {
  j["mapped_grant_pages"] = mapped_pages();
  j["bound_ports"] = bound_ports();
  j["devices"] = driver.describe_devices(type_name());
  add_cache_stats(j);
}

// The stats file spells the cache's counters and gauges as their members.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CacheGauges, blocks, free, small, main, filling, doomed)

void BlkbackService::add_cache_stats(nlohmann::json& j) const {
  if (!cache_) {
    j["cache"] = {{"enabled", false}};
    return;
  }
  nlohmann::json c = cache_->gauges();
  c.update({{"enabled", true},
            {"budget_bytes", cache_->blocks() * cache_->block_size()},
            {"block_size", cache_->block_size()},
            {"shards", cache_->shards()}});
  c.update(nlohmann::json(cache_->counters()));
  nlohmann::json images = nlohmann::json::array();
  for (const auto& img : cache_->images()) {
    const ImageIdentity& id = img->identity();
    nlohmann::json e = {{"id", img->id()}, {"dev", id.dev},           {"ino", id.ino},
                        {"size", id.size}, {"mtime_ns", id.mtime_ns}, {"retired", img->retired()}};
    e.update(nlohmann::json(img->counters()));
    images.push_back(std::move(e));
  }
  c["images"] = std::move(images);
  j["cache"] = std::move(c);
}

namespace {

// The cache's images an operator names: a registry id ("3"), or a path,
// matched by what fstat says of it (the cache knows images by device and
// inode, never by path: a renamed or second path is the same image).
Result<std::vector<IdentityId>> cache_images_named(const BlockCache& cache, const std::string& name) noexcept {
  try {
    std::vector<IdentityId> out;
    const auto images = cache.images();
    if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos && name.size() < 10) {
      const auto id = static_cast<IdentityId>(std::stoul(name));
      for (const auto& img : images) {
        if (img->id() == id) out.push_back(id);
      }
      return out;
    }
    const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return unexpected(errno);
    auto ident = identity_of_fd(fd, 0, nullptr);
    ::close(fd);
    if (!ident) return unexpected(ident.error());
    for (const auto& img : images) {
      if (img->identity().dev == ident->dev && img->identity().ino == ident->ino) out.push_back(img->id());
    }
    return out;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

}  // namespace

void BlkbackService::cache_method(const nlohmann::json& params, const ControlServer::Responder& r,
                                  const BackendDriver& driver) const {
  const std::string op = params.is_object() ? params.value("op", std::string("stats")) : std::string("stats");
  if (op == "stats") {
    nlohmann::json j;
    add_cache_stats(j);
    nlohmann::json c = std::move(j["cache"]);
    // Each VBD's share (its channels' counts while connected).
    nlohmann::json vbds = nlohmann::json::array();
    for (const auto& d : driver.describe_devices(type_name())) {
      if (auto cu = d.find("cache"); cu != d.end()) {
        nlohmann::json e = *cu;
        e["device"] = fmt::format("{}/{}/{}", type_name(), d.value("frontend", 0), d.value("devid", 0));
        e["image"] = d.value("image", std::string());
        vbds.push_back(std::move(e));
      }
    }
    c["vbds"] = std::move(vbds);
    r.result(c);
    return;
  }
  if (op != "drop") {
    r.error(rpc_error::kInvalidParams, fmt::format("cache: op '{}': want stats or drop", op));
    return;
  }
  if (!cache_) {
    r.error(rpc_error::kFailed, "cache drop: the daemon runs without a cache (--cache-mib 0)");
    return;
  }
  const std::string image = params.value("image", std::string());
  if (image.empty()) {
    // Pinned blocks (a copy in progress) and fills in flight are marked
    // doomed and freed when released; their waiters read around the cache.
    const size_t n = cache_->drop_all();
    spdlog::info("control socket: cache drop: {} entries", n);
    r.result({{"dropped", n}, {"images", "all"}});
    return;
  }
  auto ids = cache_images_named(*cache_, image);
  if (!ids) {
    r.error(rpc_error::kInvalidParams, fmt::format("cache drop {}: {}", image, error_string(ids.error())));
    return;
  }
  if (ids->empty()) {
    r.error(rpc_error::kNoDevice, fmt::format("cache drop {}: no such image in the cache", image));
    return;
  }
  size_t n = 0;
  for (IdentityId id : *ids) n += cache_->drop(id);
  spdlog::info("control socket: cache drop {}: {} entries", image, n);
  r.result({{"dropped", n}, {"images", *ids}});
}

namespace {

// The VBD counters as Prometheus families: name, stats file key, help.
struct Family {
  const char* name;
  const char* key;
  const char* help;
};
constexpr Family kVbdCounters[] = {
    {"xenpath_vbd_read_requests_total", "reads", "read requests completed or in flight"},
    {"xenpath_vbd_write_requests_total", "writes", "write requests"},
    {"xenpath_vbd_read_bytes_total", "read_bytes", "bytes read for the guest"},
    {"xenpath_vbd_write_bytes_total", "write_bytes", "bytes written for the guest"},
    {"xenpath_vbd_flush_requests_total", "flushes", "cache flush requests"},
    {"xenpath_vbd_barrier_requests_total", "barriers", "write barrier requests"},
    {"xenpath_vbd_discard_requests_total", "discards", "discard requests"},
    {"xenpath_vbd_errors_total", "errors", "requests answered with an error"},
};

// The shared cache's counters, per VBD (its share) and for the whole cache.
constexpr Family kCacheCounters[] = {
    {"hits_total", "hits", "cache lookups served from a ready block"},
    {"misses_total", "misses", "cache lookups that became a fill from disk"},
    {"joins_total", "joins", "cache lookups that joined a fill in flight"},
    {"bypasses_total", "bypasses", "cache lookups the cache could not take (read around it)"},
    {"fills_total", "fills", "cache blocks read from disk and published"},
    {"memory_bytes_total", "bytes_from_memory", "bytes the guests got from cache memory"},
    {"disk_bytes_total", "bytes_from_disk", "bytes read from disk into the cache"},
};

void add_cache_families(const char* prefix, const nlohmann::json& c, const MetricSet::Labels& labels, MetricSet& out) {
  for (const Family& f : kCacheCounters) {
    out.counter(std::string(prefix) + f.name, f.help, labels, c.value(f.key, 0.0));
  }
}

// The latency families: per op, the queues' histograms and the VBD's total
// time (node_exporter's node_disk_read_time_seconds_total).
struct LatencyFamily {
  const char* op;
  const char* histogram;
  const char* time_total;
  const char* help;
};
constexpr LatencyFamily kVbdLatency[] = {
    {"read", "xenpath_vbd_read_latency_seconds", "xenpath_vbd_read_time_seconds_total", "read requests"},
    {"write", "xenpath_vbd_write_latency_seconds", "xenpath_vbd_write_time_seconds_total", "write requests"},
    {"flush", "xenpath_vbd_flush_latency_seconds", "xenpath_vbd_flush_time_seconds_total",
     "flush and barrier requests"},
};

}  // namespace

void BlkbackService::add_metrics(const nlohmann::json& stats, MetricSet& out) {
  auto devs = stats.find("devices");
  if (devs == stats.end() || !devs->is_array()) return;
  // Histograms only while requests are timed (or were: a histogram with
  // counts stays): all-zero histograms of an untimed daemon would read as
  // "no latency".
  const bool timed = stats.value("latency_timing", false);
  if (const auto c = stats.find("cache"); c != stats.end() && c->is_object() && c->value("enabled", false)) {
    add_cache_families("xenpath_cache_", *c, {}, out);
    out.gauge("xenpath_cache_blocks", "blocks of the cache's memory", {}, c->value("blocks", 0.0));
    out.gauge("xenpath_cache_free_blocks", "blocks holding nothing", {}, c->value("free", 0.0));
  }
  for (const auto& d : *devs) {
    const MetricSet::Labels dev = {{"domain", std::to_string(d.value("frontend", 0))},
                                   {"device", std::to_string(d.value("devid", 0))}};
    out.gauge("xenpath_vbd_connected", "1 while the VBD's rings are connected", dev, d.value("connected", false));
    out.gauge("xenpath_vbd_size_bytes", "capacity the guest sees", dev,
              static_cast<double>(d.value("sectors", uint64_t{0})) * 512);
    for (const Family& f : kVbdCounters) out.counter(f.name, f.help, dev, d.value(f.key, 0.0));
    if (auto qos = d.find("qos"); qos != d.end() && qos->is_object()) {
      out.counter("xenpath_vbd_qos_delayed_requests_total", "requests that waited for QoS credit", dev,
                  qos->value("delayed", 0.0));
      out.counter("xenpath_vbd_qos_throttled_seconds_total", "time a queue's head waited for QoS credit", dev,
                  qos->value("throttled_seconds", 0.0));
    }
    if (const auto c = d.find("cache"); c != d.end() && c->is_object()) {
      out.gauge("xenpath_vbd_cache_enabled", "1 while the VBD's reads of its base levels go through the cache", dev,
                c->value("enabled", false));
      add_cache_families("xenpath_vbd_cache_", *c, dev, out);
    }
    if (auto qs = d.find("per_queue"); qs != d.end() && qs->is_array()) {
      for (const auto& q : *qs) {
        MetricSet::Labels ql = dev;
        ql["queue"] = std::to_string(q.value("queue", 0));
        out.gauge("xenpath_vbd_queue_in_flight_requests", "requests a queue consumed and not yet answered", ql,
                  q.value("in_flight", 0.0));
        const auto lat = q.find("latency");
        if (lat == q.end() || !lat->is_object()) continue;
        for (const LatencyFamily& f : kVbdLatency) {
          const auto h = lat->find(f.op);
          if (h == lat->end() || !h->is_object() || (!timed && h->value("count", 0) == 0)) continue;
          out.latency_histogram(f.histogram,
                                std::string("time from taking ") + f.help +
                                    " off the ring to their response (answered OKAY, while timed)",
                                ql, *h);
        }
      }
    }
    if (const auto lat = d.find("latency"); lat != d.end() && lat->is_object()) {
      for (const LatencyFamily& f : kVbdLatency) {
        const auto h = lat->find(f.op);
        if (h == lat->end() || !h->is_object() || (!timed && h->value("count", 0) == 0)) continue;
        out.counter(f.time_total, std::string("total time of ") + f.help + " (the latency histograms' sum)", dev,
                    h->value("sum_ns", 0.0) / 1e9);
      }
    }
  }
}

}  // namespace xenpath
