// The DPDK adapter's process-wide part: EAL set-up (arguments, logging into
// spdlog, the mbuf dynamic flag), datapath thread registration, and the
// devargs template. See port_dpdk.h.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_version.h>

#include "common/log.h"
#include "netback/port_dpdk.h"
#include "netback/port_dpdk_internal.h"

namespace xenpath {

namespace dpdk_detail {
std::atomic<uint64_t> g_hash_l4_flag{0};
}  // namespace dpdk_detail

namespace {

using dpdk_detail::g_hash_l4_flag;
constexpr const char* kHashL4FlagName = "xenpath_dynflag_hash_l4";

// DPDK's log lines go through spdlog with the level of the message.
ssize_t log_write(void* /*cookie*/, const char* buf, size_t size) {
  const int lvl = rte_log_cur_msg_loglevel();
  spdlog::level::level_enum sl = spdlog::level::trace;
  if (lvl <= static_cast<int>(RTE_LOG_ERR)) sl = spdlog::level::err;
  else if (lvl == static_cast<int>(RTE_LOG_WARNING)) sl = spdlog::level::warn;
  else if (lvl == static_cast<int>(RTE_LOG_NOTICE)) sl = spdlog::level::info;
  else if (lvl == static_cast<int>(RTE_LOG_INFO)) sl = spdlog::level::debug;
  std::string_view text(buf, size);
  try {
    while (!text.empty()) {
      const size_t nl = text.find('\n');
      const std::string_view line = text.substr(0, nl);
      if (!line.empty()) spdlog::log(sl, "dpdk: {}", line);
      if (nl == std::string_view::npos) break;
      text.remove_prefix(nl + 1);
    }
  } catch (...) {
  }
  return static_cast<ssize_t>(size);
}

std::string cpu_list(const cpu_set_t& set) {
  std::string s;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    if (!s.empty()) s += ',';
    s += std::to_string(c);
  }
  return s;
}

std::mutex g_init_lock;
DpdkEnv* g_env = nullptr;
int g_init_error = 0;

}  // namespace

std::vector<std::string> dpdk_default_eal_args(const DpdkEnvOptions& opts) {
  std::vector<std::string> a = {"--no-huge", "--no-shconf", "-m", std::to_string(opts.memory_mb), "--no-telemetry"};
  cpu_set_t set;
  CPU_ZERO(&set);
  if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
    a.push_back("--lcores=0@(" + cpu_list(set) + ")");
  }
  if (opts.pci_allow.empty()) {
    a.emplace_back("--no-pci");
  } else {
    for (const auto& bdf : opts.pci_allow) {
      a.emplace_back("-a");
      a.push_back(bdf);
    }
  }
  if (!opts.log_level.empty()) a.push_back("--log-level=" + opts.log_level);
  return a;
}

bool vhost_net_usable(std::string* why) noexcept {
  const int fd = ::open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (why != nullptr) {
      try {
        *why = std::string("/dev/vhost-net: ") + std::strerror(errno) +
               (errno == ENOENT ? " (modprobe vhost_net; CONFIG_VHOST_NET)" : "");
      } catch (...) {
      }
    }
    return false;
  }
  struct stat st {};
  const bool chr = ::fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
  ::close(fd);
  if (!chr && why != nullptr) {
    try {
      *why = "/dev/vhost-net is not a character device";
    } catch (...) {
    }
  }
  return chr;
}

std::string_view default_vif_devargs(std::string* why) noexcept {
  return vhost_net_usable(why) ? kVhostNetVifDevargs : kTapVifDevargs;
}

Result<std::string> expand_devargs(std::string_view tmpl, DomId domid, uint32_t devid, uint16_t queues) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    const char c = tmpl[i];
    if (c == '}') return unexpected(EINVAL);
    if (c != '{') {
      out += c;
      ++i;
      continue;
    }
    const size_t close = tmpl.find('}', i);
    if (close == std::string_view::npos) return unexpected(EINVAL);
    const std::string_view key = tmpl.substr(i + 1, close - i - 1);
    if (key == "domid") out += std::to_string(domid);
    else if (key == "devid") out += std::to_string(devid);
    else if (key == "queues") out += std::to_string(queues);
    else return unexpected(EINVAL);
    i = close + 1;
  }
  if (out.empty() || out.front() == ',') return unexpected(EINVAL);
  return out;
}

Result<DpdkEnv*> DpdkEnv::init(const DpdkEnvOptions& opts) noexcept {
  std::lock_guard<std::mutex> lock(g_init_lock);
  if (g_env != nullptr) return g_env;
  if (g_init_error != 0) return unexpected(g_init_error);
  try {
    std::vector<std::string> args = opts.eal_args.empty() ? dpdk_default_eal_args(opts) : opts.eal_args;
    // EAL keeps pointers into argv: these strings live as long as the process.
    static std::vector<std::string> storage;
    storage.clear();
    storage.emplace_back("xenpath");
    storage.insert(storage.end(), args.begin(), args.end());
    static std::vector<char*> argv;
    argv.clear();
    for (auto& s : storage) argv.push_back(s.data());
    argv.push_back(nullptr);

    static cookie_io_functions_t fns{nullptr, log_write, nullptr, nullptr};
    if (FILE* f = fopencookie(nullptr, "w", fns); f != nullptr) rte_openlog_stream(f);

    cpu_set_t saved;
    const bool have_aff = pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) == 0;
    const int rc = rte_eal_init(static_cast<int>(argv.size() - 1), argv.data());
    // EAL pins its main lcore; this thread keeps the CPUs it had (other
    // work in the process, e.g. other tests or the control reactor, runs
    // here too).
    if (have_aff) pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
    if (rc < 0) {
      g_init_error = rte_errno != 0 ? rte_errno : EINVAL;
      spdlog::error("dpdk: rte_eal_init failed: {}", rte_strerror(g_init_error));
      return unexpected(g_init_error);
    }
    rte_mbuf_dynflag l4desc{};
    std::snprintf(l4desc.name, sizeof l4desc.name, "%s", kHashL4FlagName);
    if (const int bit = rte_mbuf_dynflag_register(&l4desc); bit >= 0) {
      g_hash_l4_flag.store(uint64_t{1} << bit, std::memory_order_relaxed);
    } else {
      spdlog::warn("dpdk: cannot register the {} mbuf flag: L4 flow hashes pass as L3", kHashL4FlagName);
    }
    g_env = new DpdkEnv(std::move(args));
    spdlog::info("dpdk: EAL up ({}), IOVA mode {}", rte_version(), rte_eal_iova_mode() == RTE_IOVA_VA ? "VA" : "PA");
    return g_env;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

DpdkEnv* DpdkEnv::get() noexcept {
  std::lock_guard<std::mutex> lock(g_init_lock);
  return g_env;
}

Status DpdkEnv::register_thread() noexcept {
  if (rte_lcore_id() != LCORE_ID_ANY) return ok();  // already an EAL/registered thread
  if (rte_thread_register() != 0) return unexpected(rte_errno != 0 ? rte_errno : ENOSPC);
  return ok();
}

void DpdkEnv::unregister_thread() noexcept {
  if (rte_lcore_id() != LCORE_ID_ANY && rte_lcore_id() != rte_get_main_lcore()) rte_thread_unregister();
}

}  // namespace xenpath
