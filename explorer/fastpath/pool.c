// Threads for tinygrad's CPU kernels (explorer/fastpath/cpu_threads.py builds this with clang and loads it with ctypes).
//
// pool_run() runs a list of kernels in order: a split kernel's pieces are shared among the calling thread and the
// workers (piece p on thread p % threads), a kernel that is not split runs on the calling thread alone, and the next
// kernel starts once every piece of the last one is done. The workers spin between kernels instead of sleeping, so
// handing them the next kernel costs a cache line instead of waking a thread: on a VM, a wake-up took longer than many
// of the kernels. A worker that has had nothing to do for SPIN_NS goes to sleep until the next kernel. No Python runs
// here: a whole replayed step is one call, with the GIL released.
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define MAX_ARGS 24
#define MAX_THREADS 64
#define SPIN_NS 500000L

typedef struct { void *fxn; int32_t nargs, slot, pieces, split; uint64_t args[MAX_ARGS]; } kernel_t;
// Every kernel is called with MAX_ARGS arguments: under the x86-64 and AArch64 C calling conventions the extra ones
// are ignored by the callee and removed by the caller, so one call fits tinygrad's kernels of any arity up to that.
typedef void (*kernel_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

static const kernel_t *current;  // the kernel being shared out, and among how many threads (set before generation moves)
static int current_threads;
static _Atomic uint64_t generation;  // moves once per shared kernel
static _Atomic int busy;             // workers not yet done with the current kernel
static _Atomic int sleepers;
static int workers;                  // threads started besides the caller
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void run_pieces(const kernel_t *k, int first, int step) {
  uint64_t a[MAX_ARGS] = {0};
  for (int i = 0; i < k->nargs; i++) a[i] = k->args[i];
  for (int p = first; p < k->pieces; p += step) {
    if (k->slot >= 0) a[k->slot] = (uint64_t)p;
    ((kernel_fn)k->fxn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14],
                        a[15], a[16], a[17], a[18], a[19], a[20], a[21], a[22], a[23]);
  }
}

static void *work(void *arg) {
  int id = (int)(intptr_t)arg;  // 1..workers; the caller is 0
  uint64_t seen = atomic_load(&generation);
  for (;;) {
    uint64_t g;
    long since = now_ns();
    unsigned spins = 0;
    while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
      if ((++spins & 255) || now_ns() - since < SPIN_NS) { relax(); continue; }
      pthread_mutex_lock(&lock);  // idle for SPIN_NS: sleep until the next kernel
      atomic_fetch_add(&sleepers, 1);
      while (atomic_load(&generation) == seen) pthread_cond_wait(&wake, &lock);
      atomic_fetch_sub(&sleepers, 1);
      pthread_mutex_unlock(&lock);
    }
    seen = g;
    if (id < current_threads) run_pieces(current, id, current_threads);
    atomic_fetch_sub_explicit(&busy, 1, memory_order_release);
  }
  return 0;
}

static void forked_child(void) {  // a forked child has only the thread that forked: no workers to hand pieces to
  workers = 0;
  atomic_store(&sleepers, 0);
  pthread_mutex_init(&lock, 0);
  pthread_cond_init(&wake, 0);
}

// Start workers until there are threads - 1 of them; returns how many threads a kernel can use (the caller's too).
int pool_start(int threads) {
  static int registered;
  if (!registered) registered = !pthread_atfork(0, 0, forked_child);
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  while (workers < threads - 1) {
    pthread_t t;
    if (pthread_create(&t, 0, work, (void *)(intptr_t)(workers + 1))) break;
    pthread_detach(t);
    workers++;
  }
  return workers + 1;
}

// Run kernels[0..n) in order on `threads` threads (the calling one included); returns the pieces the workers ran.
long pool_run(const kernel_t *kernels, int n, int threads) {
  long on_workers = 0;
  if (threads > workers + 1) threads = workers + 1;
  for (int i = 0; i < n; i++) {
    const kernel_t *k = &kernels[i];
    if (threads < 2 || !k->split || k->slot < 0 || k->pieces < 2) { run_pieces(k, 0, 1); continue; }
    current = k;
    current_threads = threads;
    atomic_store_explicit(&busy, workers, memory_order_relaxed);
    atomic_fetch_add(&generation, 1);  // publishes current, current_threads and busy to the workers
    if (atomic_load(&sleepers) > 0) {
      pthread_mutex_lock(&lock);
      pthread_cond_broadcast(&wake);
      pthread_mutex_unlock(&lock);
    }
    run_pieces(k, 0, threads);
    on_workers += k->pieces - (k->pieces + threads - 1) / threads;
    while (atomic_load_explicit(&busy, memory_order_acquire) > 0) relax();
  }
  return on_workers;
}
