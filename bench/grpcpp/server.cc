// grpcpp-agent-server: the reference side of bench/grpcpp/compare.sh. A gRPC C++ server of
// scan.AgentService (proto/agent.proto) on the async API with ONE completion queue drained by the
// main thread, so that the comparison with sirius-manager is one event loop against one event
// loop (compare.sh pins both to the same core). Connect reads AgentMessages and counts them,
// keeping the stream open until the agent ends it; Ping answers with the counters.
// Counters: SIGUSR1 writes "messages=M streams=S" to stdout (one line), Ping returns the same text.
// Usage: grpcpp-agent-server HOST:PORT
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>

#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include "agent.grpc.pb.h"

namespace {

// Written by the main thread only; read by the SIGUSR1 handler, which may run on any of gRPC's
// internal threads, hence atomics (lock-free: safe in a signal handler).
std::atomic<uint64_t> g_messages{0};
std::atomic<uint64_t> g_streams{0};

void bump(std::atomic<uint64_t> &c, int64_t d) {
  c.store(c.load(std::memory_order_relaxed) + static_cast<uint64_t>(d), std::memory_order_relaxed);
}

// Formats "messages=M streams=S\n" without stdio: the signal handler may only call
// async-signal-safe functions.
size_t format_counters(char *buf, size_t cap) {
  size_t n = 0;
  auto put = [&](const char *s) {
    while (*s && n + 1 < cap)
      buf[n++] = *s++;
  };
  auto num = [&](uint64_t v) {
    char d[24];
    int k = 0;
    do {
      d[k++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v);
    while (k && n + 1 < cap)
      buf[n++] = d[--k];
  };
  put("messages=");
  num(g_messages.load(std::memory_order_relaxed));
  put(" streams=");
  num(g_streams.load(std::memory_order_relaxed));
  put("\n");
  buf[n] = '\0';
  return n;
}

void on_usr1(int) {
  char buf[80];
  size_t n = format_counters(buf, sizeof buf);
  ssize_t w = write(STDOUT_FILENO, buf, n);
  (void)w;
}

using scan::AgentService;

// One outstanding operation per object; the object itself is the completion-queue tag.
class Call {
public:
  virtual ~Call() = default;
  virtual void proceed(bool ok) = 0;
};

class ConnectCall final : public Call {
public:
  ConnectCall(AgentService::AsyncService *svc, grpc::ServerCompletionQueue *cq)
      : svc_(svc), cq_(cq), stream_(&ctx_) {
    svc_->RequestConnect(&ctx_, &stream_, cq_, cq_, this);
  }

  void proceed(bool ok) override {
    switch (state_) {
    case State::kRequested:
      if (!ok) { // the server is shutting down
        delete this;
        return;
      }
      new ConnectCall(svc_, cq_); // accept the next stream
      bump(g_streams, 1);
      state_ = State::kReading;
      stream_.Read(&msg_, this);
      return;
    case State::kReading:
      if (!ok) { // the agent half-closed or the connection went away
        state_ = State::kFinishing;
        stream_.Finish(grpc::Status::OK, this);
        return;
      }
      bump(g_messages, 1);
      stream_.Read(&msg_, this);
      return;
    case State::kFinishing:
      bump(g_streams, -1);
      delete this;
      return;
    }
  }

private:
  enum class State { kRequested, kReading, kFinishing };
  AgentService::AsyncService *svc_;
  grpc::ServerCompletionQueue *cq_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<scan::CommandMessage, scan::AgentMessage> stream_;
  scan::AgentMessage msg_;
  State state_ = State::kRequested;
};

class PingCall final : public Call {
public:
  PingCall(AgentService::AsyncService *svc, grpc::ServerCompletionQueue *cq)
      : svc_(svc), cq_(cq), writer_(&ctx_) {
    svc_->RequestPing(&ctx_, &req_, &writer_, cq_, cq_, this);
  }

  void proceed(bool ok) override {
    if (!ok || answered_) {
      delete this;
      return;
    }
    new PingCall(svc_, cq_);
    char buf[80];
    size_t n = format_counters(buf, sizeof buf);
    if (n > 0 && buf[n - 1] == '\n')
      buf[n - 1] = '\0';
    scan::PingResponse resp;
    resp.set_message(buf);
    resp.set_timestamp(static_cast<int64_t>(time(nullptr)));
    answered_ = true;
    writer_.Finish(resp, grpc::Status::OK, this);
  }

private:
  AgentService::AsyncService *svc_;
  grpc::ServerCompletionQueue *cq_;
  grpc::ServerContext ctx_;
  scan::PingRequest req_;
  grpc::ServerAsyncResponseWriter<scan::PingResponse> writer_;
  bool answered_ = false;
};

} // namespace

int main(int argc, char **argv) {
  if (argc != 2 || !strcmp(argv[1], "--help")) {
    fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  setvbuf(stdout, nullptr, _IONBF, 0);

  AgentService::AsyncService svc;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(argv[1], grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&svc);
  std::unique_ptr<grpc::ServerCompletionQueue> cq = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    fprintf(stderr, "grpcpp-agent-server: cannot listen on %s\n", argv[1]);
    return 1;
  }
  fprintf(stderr, "grpcpp-agent-server: listening on %s\n", argv[1]);

  new ConnectCall(&svc, cq.get());
  new PingCall(&svc, cq.get());
  void *tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok))
    static_cast<Call *>(tag)->proceed(ok);
  return 0;
}
