// Timing and memory readings shared by the benchmarks.
#ifndef GLASSBOX_BENCH_BENCH_UTIL_H_
#define GLASSBOX_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace glassbox::bench {


// Wall times of `fns` run in turn, `rounds` times after one warm-up round: times[f][round].
// Interleaving puts every function under the same machine noise, so per-round ratios
// between them are steadier than ratios of separately measured medians.
inline std::vector<std::vector<double>> InterleavedSeconds(const std::vector<std::function<void()>>& fns,
                                                           int rounds) {
  std::vector<std::vector<double>> times(fns.size());
  for (int round = -1; round < rounds; ++round) {
    for (size_t f = 0; f < fns.size(); ++f) {
      const auto start = std::chrono::steady_clock::now();
      fns[f]();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (round >= 0) times[f].push_back(seconds);
    }
  }
  return times;
}

inline double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median wall time of `repeats` calls after one warm-up call, in seconds.
inline double Seconds(const std::function<void()>& fn, int repeats) {
  return Median(InterleavedSeconds({fn}, repeats)[0]);
}

// Median over rounds of times[a][round] / times[b][round].
inline double MedianRatio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> ratios;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) ratios.push_back(a[i] / b[i]);
  return Median(ratios);
}

// A /proc/self/status memory field ("VmHWM:" peak, "VmRSS:" current) in bytes.
inline double StatusBytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == field) {
      double kb;
      status >> kb;
      return kb * 1024;
    }
    status.ignore(1 << 16, '\n');
  }
  return 0;
}

// Resets the peak (VmHWM) to the current resident size (Linux 4.0+).
inline void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace glassbox::bench

#endif  // GLASSBOX_BENCH_BENCH_UTIL_H_
