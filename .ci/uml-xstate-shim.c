/*
 * LD_PRELOAD shim that lets User-Mode Linux 6.1 (Debian's user-mode-linux) run userspace on a
 * host whose CPU has more XSAVE state than UML 6.1 knows of (AVX-512, AMX: 2.7 to 11 KB).
 * .ci/vcan builds it and uses it only when a plain boot of UML fails.
 *
 * Why: UML keeps each guest thread's FP registers in a buffer of sizeof(struct _xstate) (832
 * bytes: x87/SSE, the XSAVE header and AVX) and moves them with
 * ptrace(PTRACE_GETREGSET/SETREGSET, NT_X86_XSTATE) on the host process that runs the thread.
 * The host kernel copies a short buffer out on GETREGSET, but on SETREGSET it requires the
 * whole XSAVE area (arch/x86/kernel/fpu/regset.c, xstateregs_set: count must equal
 * fpu_user_cfg.max_size, else -EFAULT). So the first switch back to a guest process fails:
 * "userspace - ptrace set fp regs failed", SIGSEGV in init, kernel panic. Upstream UML fixed it
 * later by asking the host for the regset's size (arch/x86/um/os-Linux/registers.c:
 * host_fp_size, found with a 2 MiB GETREGSET probe, and dynamically sized fp[] in
 * struct uml_pt_regs); 6.1 predates that.
 *
 * What this does: it makes NT_X86_XSTATE work at the host's size behind UML's back. GETREGSET
 * reads the whole area into a buffer of ours kept per UML buffer (UML passes the same buffer,
 * the thread's regs->fp, for the same guest thread), and hands UML its first 832 bytes.
 * SETREGSET puts UML's 832 bytes over that saved area and writes the whole of it. Each guest
 * thread thus keeps all its vector state (AVX-512 included) across switches, as on a kernel
 * that knew the size.
 *
 * Why not just hide the regset (return EIO, UML then falls back to FXSAVE through
 * PTRACE_GETFPREGS, which also boots): FXSAVE holds x87 and XMM0-15 only, so guest threads of
 * one process (one host process) would share the upper halves of YMM/ZMM and ZMM16-31, and
 * glibc's memcpy/strlen on AVX-512 hosts work in exactly those registers: a thread preempted in
 * a memcpy could resume with another thread's data. Threads are everywhere in our tests.
 *
 * Single-threaded by design: UML 6.1 is uniprocessor and only its main thread calls ptrace.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

struct saved_state {
  const void *uml_buffer; /* the key: UML's regs->fp of one guest thread */
  unsigned char *area;    /* the whole XSAVE area of that thread */
  struct saved_state *next;
};

#define BUCKETS 4096
#define PROBE_SIZE (2 * 1024 * 1024) /* more than any XSAVE area; the kernel says how much */

static ptrace_fn real_ptrace;
static size_t host_size; /* the host's XSAVE area, in bytes; 0 until known */
static struct saved_state *table[BUCKETS];

static long xstate(enum __ptrace_request req, pid_t pid, void *buffer, size_t size) {
  struct iovec iov = {.iov_base = buffer, .iov_len = size};
  return real_ptrace(req, pid, (void *)(uintptr_t)NT_X86_XSTATE, &iov);
}

/* Asks the host kernel for the size of the regset (it shortens iov_len to it). */
static int learn_host_size(pid_t pid) {
  struct iovec iov = {.iov_base = malloc(PROBE_SIZE), .iov_len = PROBE_SIZE};
  long rc;
  if (iov.iov_base == NULL) return -1;
  rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)(uintptr_t)NT_X86_XSTATE, &iov);
  free(iov.iov_base);
  if (rc < 0) return -1;
  host_size = iov.iov_len;
  return 0;
}

/* The saved area for UML's buffer, made (uninitialised) if there is none yet. */
static struct saved_state *saved_for(const void *uml_buffer, int *created) {
  size_t bucket = ((uintptr_t)uml_buffer >> 4) % BUCKETS;
  struct saved_state *entry;
  for (entry = table[bucket]; entry != NULL; entry = entry->next) {
    if (entry->uml_buffer == uml_buffer) {
      *created = 0;
      return entry;
    }
  }
  entry = malloc(sizeof(*entry));
  if (entry == NULL) return NULL;
  entry->area = malloc(host_size);
  if (entry->area == NULL) {
    free(entry);
    return NULL;
  }
  entry->uml_buffer = uml_buffer;
  entry->next = table[bucket];
  table[bucket] = entry;
  *created = 1;
  return entry;
}

static long get_xstate(pid_t pid, struct iovec *uml) {
  int created;
  struct saved_state *saved = saved_for(uml->iov_base, &created);
  if (saved == NULL) return errno = ENOMEM, -1;
  if (xstate(PTRACE_GETREGSET, pid, saved->area, host_size) < 0) return -1;
  memcpy(uml->iov_base, saved->area, uml->iov_len);
  return 0; /* uml->iov_len stays: all of UML's buffer was filled */
}

static long set_xstate(pid_t pid, const struct iovec *uml) {
  int created;
  struct saved_state *saved = saved_for(uml->iov_base, &created);
  if (saved == NULL) return errno = ENOMEM, -1;
  /* A buffer UML never read into (a new thread's registers, copied from its parent's): the
   * parts UML cannot see come from the host process as it is. Vector registers are
   * caller-saved, so no code expects more than UML's part there at that point. */
  if (created && xstate(PTRACE_GETREGSET, pid, saved->area, host_size) < 0) return -1;
  memcpy(saved->area, uml->iov_base, uml->iov_len);
  return xstate(PTRACE_SETREGSET, pid, saved->area, host_size);
}

long ptrace(enum __ptrace_request req, ...) {
  va_list ap;
  pid_t pid;
  void *addr, *data;
  struct iovec *iov;

  va_start(ap, req);
  pid = va_arg(ap, pid_t);
  addr = va_arg(ap, void *);
  data = va_arg(ap, void *);
  va_end(ap);
  if (real_ptrace == NULL) real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");

  iov = data;
  if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) &&
      (uintptr_t)addr == NT_X86_XSTATE && iov != NULL) {
    if (host_size == 0 && learn_host_size(pid) < 0) return -1;
    if (iov->iov_len < host_size) {
      return req == PTRACE_GETREGSET ? get_xstate(pid, iov) : set_xstate(pid, iov);
    }
  }
  return real_ptrace(req, pid, addr, data);
}
