// Hostile but well-formed requests on the tiny checkpoint: numbers that would overflow,
// sampling parameters out of range, absurd names, and jobs too big for the worker's memory
// are refused with a clear INVALID_ARGUMENT or RESOURCE_EXHAUSTED before anything runs.
// Nothing big is ever allocated here: every refusal happens in the shape-only pass.
// LibTorch brings glog, whose CHECK would replace Catch's: it goes first, so Catch's wins.
#include <c10/util/Logging.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "tests/intervention/graph_test_util.h"

namespace glassbox::intervention {
namespace {

using namespace testing_graphs;  // NOLINT: the helpers every test here uses
using protocol::Value;

constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// A request with one trace over one short prompt; nodes are added through the builder.
struct OneTrace {
  protocol::Request request;
  GraphBuilder graph{request};
  explicit OneTrace(std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}}) {
    graph.Trace(std::move(prompts));
  }
};

Status RunStatus(const Model& model, const protocol::Request& request,
                 const InterventionLimits& limits = InterventionLimits()) {
  return Run(model, request, limits).status();
}

std::vector<int64_t> Int64Values(const Value& v) {
  REQUIRE(v.kind == Value::Kind::kTensor);
  REQUIRE(v.tensor->dtype == protocol::DType::kInt64);
  std::vector<int64_t> out(v.tensor->bytes.size() / sizeof(int64_t));
  if (!out.empty()) std::memcpy(out.data(), v.tensor->bytes.data(), v.tensor->bytes.size());
  return out;
}

TEST_CASE("integer overflow in user-given numbers is INVALID_ARGUMENT naming the node and the numbers",
          "[intervention]") {
  auto model = TinyModel();
  auto expect_refused = [&](const protocol::Request& request, std::vector<std::string> texts) {
    const Status status = RunStatus(*model, request);
    INFO(status.ToString());
    CHECK(status.code() == StatusCode::kInvalidArgument);
    for (const std::string& text : texts) CHECK(status.message().find(text) != std::string::npos);
  };
  SECTION("arange whose end - start overflows and whose quotient traps (SIGFPE)") {
    OneTrace t;
    t.graph.Save(t.graph.Add("arange", {Value::Int(0), Value::Int(kMin), Value::Int(-1)}), "r");
    expect_refused(t.request, {"node 0", "arange(0, -9223372036854775808, -1)",
                               "would give 9223372036854775808 values; the limit is 67108864"});
  }
  SECTION("arange with few values but an end - start beyond int64") {
    OneTrace t;
    t.graph.Save(t.graph.Add("arange", {Value::Int(-(int64_t{1} << 62)), Value::Int(int64_t{1} << 62),
                                        Value::Int(int64_t{1} << 61)}), "r");
    expect_refused(t.request, {"node 0", "end - start overflows int64"});
  }
  SECTION("creation sizes whose product overflows") {
    OneTrace t;
    t.graph.Save(t.graph.Add("zeros", {Value::List({Value::Int(int64_t{1} << 32), Value::Int(int64_t{1} << 32)})}), "z");
    expect_refused(t.request, {"node 0", "shape [4294967296, 4294967296] has more than 2^63 elements"});
  }
  SECTION("negative creation sizes") {
    OneTrace t;
    t.graph.Save(t.graph.Add("full", {Value::List({Value::Int(3), Value::Int(-5)}), Value::Float(1)}), "f");
    expect_refused(t.request, {"node 0", "shape [3, -5] has the negative size -5"});
  }
  SECTION("a reshape of an empty tensor to sizes whose product wraps to 0") {
    OneTrace t;
    const int64_t empty = t.graph.Add("zeros", {Value::List({Value::Int(0)})});
    const int64_t huge = t.graph.Add("reshape", {Value::Ref(empty), Value::List({Value::Int(int64_t{1} << 32),
                                                                                 Value::Int(int64_t{1} << 32)})});
    t.graph.Save(huge, "h");
    expect_refused(t.request, {"node 1", "shape [4294967296, 4294967296] has more than 2^63 elements"});
  }
  SECTION("randn beyond its element limit names the shape") {
    OneTrace t;
    t.graph.Save(t.graph.Add("randn", {Value::List({Value::Int(int64_t{1} << 20), Value::Int(int64_t{1} << 20)}),
                                       Value::Int(0)}), "r");
    expect_refused(t.request, {"node 0", "randn shape [1048576, 1048576] has more than 2^28 elements"});
  }
}

TEST_CASE("slice bounds and steps beyond int64's middle mean what they mean in Python", "[intervention]") {
  auto model = TinyModel();
  OneTrace t;
  const int64_t r = t.graph.Add("arange", {Value::Int(10)});
  t.graph.Save(t.graph.Add("getitem", {Value::Ref(r), Value::MakeSlice({kMin, kMax, kMax})}), "every_huge_step");
  t.graph.Save(t.graph.Add("getitem", {Value::Ref(r), Value::MakeSlice({-kMax, std::nullopt, kMax - 1})}), "from_far_left");
  t.graph.Save(t.graph.Add("getitem", {Value::Ref(r), Value::MakeSlice({kMax, kMin, std::nullopt})}), "empty");
  const int64_t parts = t.graph.Add("split", {Value::Ref(r), Value::Int(kMax)});
  t.graph.Save(t.graph.Add("getitem", {Value::Ref(parts), Value::Int(0)}), "one_chunk");
  const protocol::Result result = RunOk(*model, t.request);
  CHECK(Int64Values(Saved(result, "every_huge_step").value) == std::vector<int64_t>{0});
  CHECK(Int64Values(Saved(result, "from_far_left").value) == std::vector<int64_t>{0});
  CHECK(Int64Values(Saved(result, "empty").value).empty());
  CHECK(Int64Values(Saved(result, "one_chunk").value) == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
}

TEST_CASE("sampling parameters out of range or NaN are INVALID_ARGUMENT naming them", "[intervention]") {
  auto model = TinyModel();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto check = [&](const std::function<void(protocol::GenerateOptions&)>& set, const std::string& text) {
    OneTrace t;
    t.request.traces[0].generate = protocol::GenerateOptions{};
    t.request.traces[0].generate->max_new_tokens = 2;
    set(*t.request.traces[0].generate);
    t.graph.Save(t.graph.Read("lm_head.output"), "logits");
    const Status status = RunStatus(*model, t.request);
    INFO(text << " / " << status.ToString());
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK(status.message().find(text) != std::string::npos);
  };
  check([&](auto& g) { g.temperature = nan; }, "it must be a finite number >= 0");
  check([&](auto& g) { g.temperature = inf; }, "temperature is inf");
  check([&](auto& g) { g.temperature = -1; }, "temperature is -1");
  check([&](auto& g) { g.top_p = nan; g.temperature = 1; }, "top_p is nan; it must be in (0, 1]");
  check([&](auto& g) { g.top_p = 0; }, "top_p is 0;");
  check([&](auto& g) { g.top_p = 1.5; }, "top_p is 1.5;");
  check([&](auto& g) { g.top_k = -1; }, "top_k is -1;");
  check([&](auto& g) { g.top_k = int64_t{1} << 32; }, "top_k is 4294967296; it must be in [0, 2147483647]");
  check([&](auto& g) { g.max_new_tokens = kMax; }, "max_new_tokens is 9223372036854775807");
}

TEST_CASE("absurdly long op, point and module names are refused with a short message", "[intervention]") {
  auto model = TinyModel();
  const std::string huge(size_t{1} << 20, 'x');
  auto check = [&](const protocol::Request& request, const std::string& what) {
    const Status status = RunStatus(*model, request);
    INFO(status.ToString().substr(0, 2000));
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK(status.message().find(what + " 'xxxx") != std::string::npos);
    CHECK(status.message().find("(1048576 bytes) is longer than 256 bytes") != std::string::npos);
    CHECK(status.message().size() < 1000);
  };
  OneTrace op;
  op.graph.Add(huge, {});
  check(op.request, "op name");
  OneTrace point;
  point.graph.Save(point.graph.Read(huge), "r");
  check(point.request, "hook point name");
  OneTrace skip;
  skip.graph.Add("skip", {Value::Float(0)}, {{"module", Value::String(huge)}});
  check(skip.request, "module name");
  OneTrace cache;
  cache.graph.Add("cache", {}, {{"filter", Value::String(huge)}});
  check(cache.request, "cache filter");
}

TEST_CASE("a job whose memory estimate is over max_job_bytes is refused before it runs",
          "[intervention]") {
  auto model = TinyModel();
  InterventionLimits limits;
  limits.max_job_bytes = int64_t{64} << 20;
  auto expect_refused = [&](const protocol::Request& request, const std::string& part) {
    const Status status = RunStatus(*model, request, limits);
    INFO(status.ToString());
    CHECK(status.code() == StatusCode::kResourceExhausted);
    CHECK(status.message().find("this job needs an estimated ") != std::string::npos);
    CHECK(status.message().find(part) != std::string::npos);
    CHECK(status.message().find("this worker's limit is 67108864 bytes per job (--max-job-bytes)") !=
          std::string::npos);
  };
  auto list = [](std::vector<int64_t> sizes) {
    std::vector<Value> out;
    for (int64_t s : sizes) out.push_back(Value::Int(s));
    return Value::List(out);
  };
  SECTION("ones([30000, 30000]), not saved (saving it would pass max_saved_bytes)") {
    OneTrace t;
    t.graph.Save(t.graph.Add("sum", {Value::Ref(t.graph.Add("ones", {list({30000, 30000})}))}), "total");
    expect_refused(t.request, "graph values 3600000004");
  }
  SECTION("a randn of 2^28 values, not saved") {
    OneTrace t;
    const int64_t noise = t.graph.Add("randn", {list({16384, 16384}), Value::Int(0)});
    t.graph.Save(t.graph.Add("sum", {Value::Ref(noise)}), "total");
    expect_refused(t.request, "graph values 1073741828");
  }
  SECTION("a broadcast (expand) blow-up") {
    OneTrace t;
    const int64_t column = t.graph.Add("zeros", {list({40000, 1})});
    const int64_t row = t.graph.Add("zeros", {list({1, 40000})});
    const int64_t outer = t.graph.Add("add", {Value::Ref(column), Value::Ref(row)});
    t.graph.Save(t.graph.Add("mean", {Value::Ref(outer)}), "m");
    expect_refused(t.request, "graph values 6400");
  }
  SECTION("a repeat blow-up: a 4 MiB tensor concatenated 100 times") {
    OneTrace t;
    const int64_t x = t.graph.Add("zeros", {list({1024, 1024})});
    std::vector<Value> copies(100, Value::Ref(x));
    t.graph.Save(t.graph.Add("cat", {Value::List(copies)}), "many");
    expect_refused(t.request, "graph values 423624704, saved values 838860800");
  }
  SECTION("8 prompts of 4096 tokens with every point cached") {
    limits.max_saved_bytes = kMax;  // the budget, not the saved-bytes limit, refuses it
    OneTrace t(std::vector<std::vector<int64_t>>(8, std::vector<int64_t>(4096, 7)));
    t.graph.Add("cache", {}, {{"invoke", Value::None()}});
    const Status status = RunStatus(*model, t.request, limits);
    INFO(status.ToString());
    CHECK(status.code() == StatusCode::kResourceExhausted);
    // Every cached value is counted: at least 8 x 4096 x hidden x 4 bytes per layer output.
    const int64_t per_output = int64_t{8} * 4096 * model->config().hidden_size * 4;
    const std::string& m = status.message();
    const size_t at = m.find("saved values ");
    REQUIRE(at != std::string::npos);
    CHECK(std::stoll(m.substr(at + 13)) > 2 * model->config().num_layers * per_output);
  }
  SECTION("8 prompts of 4096 tokens generating: refused, and the KV cache grows the estimate") {
    auto generation = [&](int64_t new_tokens) {
      OneTrace t(std::vector<std::vector<int64_t>>(8, std::vector<int64_t>(4096, 7)));
      t.request.traces[0].generate = protocol::GenerateOptions{};
      t.request.traces[0].generate->max_new_tokens = new_tokens;
      t.graph.Save(t.graph.Add("size", {Value::Ref(t.graph.Read("model.norm.output", std::nullopt))}), "shape");
      const Status status = RunStatus(*model, t.request, limits);
      INFO(status.ToString());
      CHECK(status.code() == StatusCode::kResourceExhausted);
      const size_t at = status.message().find("model pass ");
      REQUIRE(at != std::string::npos);
      return std::stoll(status.message().substr(at + 11));
    };
    const int64_t kv_per_token = int64_t{2} * model->config().num_layers * model->config().num_kv_heads *
                                 model->config().head_dim * 4;  // float32 keys and values, every layer
    CHECK(generation(512) - generation(1) == kv_per_token * 8 * 511);
  }
  SECTION("a small job fits, and a scan of a big one is answered, not refused") {
    OneTrace t;
    t.graph.Save(t.graph.Read("lm_head.output"), "logits");
    CHECK(Run(*model, t.request, limits).ok());
    OneTrace big;
    big.graph.Save(big.graph.Add("sum", {Value::Ref(big.graph.Add("ones", {list({30000, 30000})}))}), "total");
    big.request.scan = true;
    CHECK(Run(*model, big.request, limits).ok());
  }
}

TEST_CASE("graph ops that cannot finish within the time limit at the stated FLOP rate are refused",
          "[intervention]") {
  auto model = TinyModel();
  InterventionLimits limits;
  limits.flops_per_second = 1000;  // a tiny rate: small graphs stand for big ones
  RunControl control;
  control.time_limit_ms = 1000;
  auto square = [](GraphBuilder& g) {
    return g.Add("zeros", {Value::List({Value::Int(64), Value::Int(64)})});
  };
  auto expect_refused = [&](const protocol::Request& request, const std::string& flops) {
    const Status status = Run(*model, request, limits, control).status();
    INFO(status.ToString());
    CHECK(status.code() == StatusCode::kResourceExhausted);
    CHECK(status.message().find("this job's graph ops need an estimated " + flops + " FLOP") != std::string::npos);
    CHECK(status.message().find("at this worker's rate of 1000 FLOP/s (--flops-per-second); its time limit is 1 s") !=
          std::string::npos);
  };
  // zeros([64, 64]) counts its 4096 elements; a 64 x 64 x 64 matmul 2 x 64^3 = 524288.
  SECTION("one matmul") {
    OneTrace t;
    const int64_t a = square(t.graph);
    t.graph.Save(t.graph.Add("matmul", {Value::Ref(a), Value::Ref(a)}), "p");
    expect_refused(t.request, "528384");
  }
  SECTION("the same as an einsum") {
    OneTrace t;
    const int64_t a = square(t.graph);
    t.graph.Save(t.graph.Add("einsum", {Value::String("ij,jk->ik"), Value::Ref(a), Value::Ref(a)}), "p");
    expect_refused(t.request, "528384");
  }
  SECTION("a chain of three") {
    OneTrace t;
    int64_t x = square(t.graph);
    for (int i = 0; i < 3; ++i) x = t.graph.Add("matmul", {Value::Ref(x), Value::Ref(x)});
    t.graph.Save(x, "p");
    expect_refused(t.request, "1.57696e+06");  // 4096 + 3 x 524288
  }
  SECTION("what fits runs, and without a time limit nothing is refused") {
    OneTrace small;
    small.graph.Save(small.graph.Add("add", {Value::Ref(small.graph.Read("lm_head.output")), Value::Float(1)}), "s");
    CHECK(Run(*model, small.request, limits, control).ok());  // ~1,000 FLOP: the model's pass is not counted
    OneTrace t;
    const int64_t a = square(t.graph);
    t.graph.Save(t.graph.Add("matmul", {Value::Ref(a), Value::Ref(a)}), "p");
    CHECK(Run(*model, t.request, limits, RunControl()).ok());
  }
}

TEST_CASE("the clock is checked between graph ops, not only between layers", "[intervention]") {
  auto model = TinyModel();
  OneTrace t;
  int64_t x = t.graph.Add("full", {Value::List({Value::Int(2)}), Value::Float(1)});
  for (int i = 0; i < 9; ++i) x = t.graph.Add("add", {Value::Ref(x), Value::Float(1)});
  t.graph.Save(x, "x");
  int calls = 0;
  RunControl control;
  control.interrupt = [&]() -> Status {
    return ++calls == 4 ? Cancelled("time limit of 1 s exceeded") : Status::Ok();
  };
  const Status status = Run(*model, t.request, InterventionLimits(), control).status();
  CHECK(status.code() == StatusCode::kCancelled);
  CHECK(status.message() == "trace 0: before node 3: time limit of 1 s exceeded");
  CHECK(calls == 4);
}

TEST_CASE("saved values over max_saved_bytes are reported once, in MiB, with how to save less",
          "[intervention]") {
  auto model = TinyModel();
  OneTrace t;
  for (int i = 0; i < 4; ++i) {  // 4 x 1 MiB against a limit of 2.5 MiB: the third crosses it
    t.graph.Save(t.graph.Add("zeros", {Value::List({Value::Int(256), Value::Int(1024)})}),
                 "z" + std::to_string(i));
  }
  InterventionLimits limits;
  limits.max_saved_bytes = (int64_t{5} << 20) / 2;
  const Status status = RunStatus(*model, t.request, limits);
  INFO(status.ToString());
  CHECK(status.code() == StatusCode::kInvalidArgument);
  const std::string& m = status.message();
  const std::string said = "over the limit of 2.5 MiB per job";
  const size_t at = m.find(said);
  REQUIRE(at != std::string::npos);
  CHECK(m.find(said, at + 1) == std::string::npos);
  CHECK(m.find("come to 3.0 MiB") != std::string::npos);
  CHECK(m.find("save less: index what you need before saving") != std::string::npos);
}

}  // namespace
}  // namespace glassbox::intervention
