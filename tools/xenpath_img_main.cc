// xenpath-img: make, inspect, repair, convert and coalesce raw and VHD
// images (docs/vhd.md). The command line only; the logic is
// blkback/vhd_tool.{h,cc}.
//
//   xenpath-img create [-f raw|vhd] [--type dynamic|fixed] FILE SIZE
//   xenpath-img snapshot PARENT CHILD
//   xenpath-img info [--json] FILE
//   xenpath-img check [--repair] FILE        exit 0 ok, 1 problems, 2 cannot check
//   xenpath-img map [--json] FILE
//   xenpath-img convert [-O raw|vhd] SRC DST
//   xenpath-img coalesce [--force] CHILD     SIGINT stops at a consistent point
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>

#include "blkback/vhd_tool.h"

namespace {

using namespace xenpath;

std::atomic<bool> g_interrupt{false};

void on_sigint(int) { g_interrupt.store(true); }

// A progress bar on stderr when it is a terminal, at most 10 updates a second.
struct ProgressBar {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last{};
  bool tty = ::isatty(STDERR_FILENO) != 0;
  bool drawn = false;

  void operator()(uint64_t done, uint64_t total) {
    if (!tty || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last < std::chrono::milliseconds(100)) return;
    last = now;
    const double frac = static_cast<double>(done) / static_cast<double>(total);
    const int width = 40;
    const int fill = static_cast<int>(frac * width);
    const double secs = std::chrono::duration<double>(now - start).count();
    const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    fmt::print(stderr, "\r[{}{}] {:3.0f}% {} / {} {}/s ", std::string(static_cast<size_t>(fill), '#'),
               std::string(static_cast<size_t>(width - fill), ' '), frac * 100, img::human_size(done),
               img::human_size(total), img::human_size(static_cast<uint64_t>(rate)));
    drawn = true;
  }
  void end() {
    if (drawn) fmt::print(stderr, "\n");
  }
};

int report_error(const VhdError& e) {
  fmt::print(stderr, "xenpath-img: {}\n", e.message);
  return 1;
}

void print_stats(const char* what, const img::CopyStats& st, double secs) {
  fmt::print("{}: {} blocks, read {}, wrote {} in {:.2f} s ({}/s)\n", what, st.blocks, img::human_size(st.bytes_read),
             img::human_size(st.bytes_written), secs,
             img::human_size(secs > 0 ? static_cast<uint64_t>(static_cast<double>(st.bytes_read) / secs) : 0));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xenpath-img: make, inspect, check, convert and coalesce raw and VHD images"};
  app.require_subcommand(1);

  std::string file, file2, size_str, format = "vhd", type = "dynamic", out_format;
  bool json = false, repair = false, force = false;

  auto* create = app.add_subcommand("create", "create an image (raw, vhd dynamic, vhd fixed)");
  create->add_option("-f,--format", format, "raw or vhd")->check(CLI::IsMember({"raw", "vhd"}));
  create->add_option("--type", type, "vhd: dynamic or fixed")->check(CLI::IsMember({"dynamic", "fixed"}));
  create->add_option("file", file, "the new image")->required();
  create->add_option("size", size_str, "virtual size, e.g. 10G, 512M, 4096")->required();

  auto* snapshot = app.add_subcommand("snapshot", "create a differencing VHD child of PARENT");
  snapshot->add_option("parent", file, "the parent VHD")->required();
  snapshot->add_option("child", file2, "the new child")->required();

  auto* info = app.add_subcommand("info", "format, virtual size, chain, allocation");
  info->add_flag("--json", json, "JSON output");
  info->add_option("file", file)->required();

  auto* check = app.add_subcommand("check", "structural consistency (exit 0 ok, 1 problems, 2 cannot check)");
  check->add_flag("--repair", repair, "fix what is safe: footer from its copy, BAT entries past the end");
  check->add_option("file", file)->required();

  auto* map = app.add_subcommand("map", "allocated ranges of the virtual disk per chain level");
  map->add_flag("--json", json, "JSON output");
  map->add_option("file", file)->required();

  auto* convert = app.add_subcommand("convert", "vhd chain -> raw, raw -> vhd dynamic");
  convert->add_option("-O,--output-format", out_format, "raw or vhd (default: the other one)")
      ->check(CLI::IsMember({"raw", "vhd"}));
  convert->add_option("src", file)->required();
  convert->add_option("dst", file2)->required();

  auto* coalesce = app.add_subcommand("coalesce", "merge a differencing CHILD into its parent");
  coalesce->add_flag("--force", force, "even if other children of the parent are in the folder");
  coalesce->add_option("child", file)->required();

  CLI11_PARSE(app, argc, argv);

  if (create->parsed()) {
    img::CreateOptions o;
    o.format = format;
    o.type = type == "fixed" ? vhd::DiskType::kFixed : vhd::DiskType::kDynamic;
    const auto size = img::parse_size(size_str);
    if (!size) {
      fmt::print(stderr, "xenpath-img: size \"{}\": expected a number with an optional K/M/G/T suffix\n", size_str);
      return 1;
    }
    o.size = *size;
    if (VhdStatus s = img::create(file, o); !vhd_ok(s)) return report_error(s);
    return 0;
  }
  if (snapshot->parsed()) {
    if (VhdStatus s = img::snapshot(file, file2); !vhd_ok(s)) return report_error(s);
    return 0;
  }
  if (info->parsed()) {
    auto j = img::info(file);
    if (!j) return report_error(j.error());
    fmt::print("{}", json ? j->dump(2) + "\n" : img::info_text(*j));
    return 0;
  }
  if (check->parsed()) {
    const img::CheckReport r = img::check(file, repair);
    for (const auto& w : r.warnings) fmt::print("warning: {}\n", w);
    for (const auto& f : r.repaired) fmt::print("repaired: {}\n", f);
    for (const auto& e : r.errors) fmt::print("error: {}\n", e);
    if (r.status == 0) fmt::print("{}: no problems{}\n", file, r.repaired.empty() ? "" : " left");
    return r.status;
  }
  if (map->parsed()) {
    auto m = img::map(file);
    if (!m) return report_error(m.error());
    if (json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& l : *m) {
        nlohmann::json ranges = nlohmann::json::array();
        for (const auto& [off, len] : l.ranges) ranges.push_back({{"offset", off}, {"length", len}});
        j.push_back({{"path", l.path}, {"type", l.type}, {"ranges", std::move(ranges)}});
      }
      fmt::print("{}\n", j.dump(2));
    } else {
      for (size_t i = 0; i < m->size(); ++i) {
        const auto& l = (*m)[i];
        fmt::print("[{}] {} ({})\n", i, l.path, l.type);
        for (const auto& [off, len] : l.ranges)
          fmt::print("  0x{:012x} +0x{:x} ({})\n", off, len, img::human_size(len));
      }
    }
    return 0;
  }

  // convert and coalesce: long-running, interruptible, with progress.
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ProgressBar bar;
  img::CopyOptions o;
  o.progress = [&bar](uint64_t d, uint64_t t) { bar(d, t); };
  o.interrupt = &g_interrupt;
  o.force = force;
  const auto t0 = std::chrono::steady_clock::now();
  VhdResult<img::CopyStats> st = VhdError{EINVAL, "no command"};
  const char* what = "";
  if (convert->parsed()) {
    what = "convert";
    if (out_format.empty()) out_format = img::looks_like_vhd(file) ? "raw" : "vhd";
    st = img::convert(file, file2, out_format, o);
  } else if (coalesce->parsed()) {
    what = "coalesce";
    st = img::coalesce(file, o);
  }
  bar.end();
  if (!st) return report_error(st.error());
  print_stats(what, *st, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (st->interrupted) {
    fmt::print(stderr, "xenpath-img: interrupted after {} of {} blocks; the images are consistent{}\n", st->blocks,
               st->total_blocks,
               coalesce->parsed() ? "; run coalesce again to finish" : " (the destination is incomplete)");
    return 130;
  }
  return 0;
}
