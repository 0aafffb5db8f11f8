// Can grant-mapped guest pages be io_uring fixed (registered) buffers?
//
// blkback does not depend on it (it uses readv/writev on the mapped pages),
// but registered buffers would save the kernel a page-table walk and a pin
// per I/O, so this probe records what the running kernel allows for each
// kind of memory a backend could hand it:
//   anonymous         ordinary process memory (the reference)
//   memfd (shmem)     what the simulated host's grant mappings are
//   sim grant map     a real SimGrantTable mapping of a guest page
//   file MAP_SHARED   a page-cache file mapping (what a gntdev mapping
//                     resembles to io_uring: a VMA with a vm_file that is
//                     neither shmem nor hugetlbfs)
//   gntdev            a real grant mapping, only where /dev/xen/gntdev
//                     exists and XENPATH_PROBE_DOMID/XENPATH_PROBE_GREF name
//                     a page some guest granted to this domain
// and prints one line per kind with the errno. Run: xenpath-uring-probe.
#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "common/xen/platform.h"
#include "sim/sim_hypervisor.h"

namespace {

using namespace xenpath;

int try_register(void* addr, size_t len) {
  io_uring ring;
  if (int r = io_uring_queue_init(4, &ring, 0); r < 0) return r;
  iovec iov{addr, len};
  int r = io_uring_register_buffers(&ring, &iov, 1);
  if (r == 0) io_uring_unregister_buffers(&ring);
  io_uring_queue_exit(&ring);
  return r;
}

void report(const char* kind, int r) {
  fmt::print("  {:<18} {}\n", kind,
             r == 0 ? std::string("registered") : fmt::format("refused: {} ({})", -r, std::strerror(-r)));
}

}  // namespace

int main() {
  utsname u{};
  ::uname(&u);
  fmt::print("io_uring fixed buffers on kernel {}:\n", u.release);
  const size_t len = 4096;

  void* anon = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  std::memset(anon, 1, len);
  report("anonymous", try_register(anon, len));

  const int mfd = ::memfd_create("probe", MFD_CLOEXEC);
  (void)::ftruncate(mfd, len);
  void* shm = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  std::memset(shm, 1, len);
  report("memfd (shmem)", try_register(shm, len));

  {
    sim::SimHypervisor hv;
    auto dom = hv.create_domain(1, 16, "guest");
    auto gt = hv.open_grant_table(kDom0);
    if (dom && gt) {
      auto pfn = (*dom)->alloc_pages(1);
      auto ref = pfn ? (*dom)->grant_access(kDom0, *pfn, false) : Result<GrantRef>(unexpected(EIO));
      if (ref) {
        GrantRef refs[1] = {*ref};
        auto m = (*gt)->map(1, refs, true);
        report("sim grant map", m ? try_register(m->data(), len) : -m.error());
      }
    }
  }

  char path[] = "/var/tmp/xenpath-probe-XXXXXX";
  const int ffd = ::mkstemp(path);
  if (ffd >= 0) {
    (void)::ftruncate(ffd, len);
    void* fm = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
    std::memset(fm, 1, len);
    report("file MAP_SHARED", try_register(fm, len));
    ::munmap(fm, len);
    ::close(ffd);
    ::unlink(path);
  }

  const char* domid = std::getenv("XENPATH_PROBE_DOMID");
  const char* gref = std::getenv("XENPATH_PROBE_GREF");
  if (xen_available() && domid != nullptr && gref != nullptr) {
    auto platform = open_libxen_platform();
    auto gt = platform ? (*platform)->open_grant_table() : Result<std::unique_ptr<GrantTable>>(unexpected(ENODEV));
    if (gt) {
      GrantRef refs[1] = {static_cast<GrantRef>(std::strtoul(gref, nullptr, 10))};
      auto m = (*gt)->map(static_cast<DomId>(std::strtoul(domid, nullptr, 10)), refs, true);
      report("gntdev", m ? try_register(m->data(), len) : -m.error());
    }
  } else {
    fmt::print("  {:<18} not probed (needs /dev/xen and XENPATH_PROBE_DOMID/XENPATH_PROBE_GREF)\n", "gntdev");
  }
  return 0;
}
