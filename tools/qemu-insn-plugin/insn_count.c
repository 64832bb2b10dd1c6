/*
 * Executed-instruction counter for qemu-user 7.2 (TCG plugin API version 1).
 *
 * It is the measuring instrument of scripts/arm-proxy.sh: an emulation proxy for the cost of an
 * aarch64 run, since the project has no ARM hardware. It counts guest instructions, not time.
 *
 * Counting: when a translation block (TB) is translated, the plugin attaches to it the number of
 * guest instructions it holds; every execution of the TB then adds that number to a counter.
 * Two ways to add:
 *   mode=cb (default)  an execution callback adds to a per-vCPU slot. In qemu-user every guest
 *                      thread is its own vCPU, so each slot has one writer: exact with threads.
 *   mode=inline        qemu's inline ADD_U64 on one shared u64: cheaper, but the adds are not
 *                      atomic, so it is exact only while a single guest thread runs.
 * A TB counts as fully executed once entered; user-mode code leaves a TB early only on a
 * guest-visible fault or an exclusive-mode retry of an atomic, neither of which is part of the
 * measured code paths, so repeated runs of the same binary give identical counts.
 *
 * symbols=on additionally attributes every TB to the ELF symbol of its first instruction (the
 * main binary's symbol table, as qemu loaded it; TBs end at branches, so a TB rarely spans two
 * functions). Code without a symbol (shared libraries, the loader) is charged to the file it
 * was mapped from, one entry per file.
 *
 * Output, at guest exit, to out=FILE (default: stderr), one record per line:
 *   total <instructions>
 *   vcpu <index> <instructions>          (mode=cb)
 *   sym <instructions> <symbol>          (symbols=on, largest first)
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* qemu-user reuses the lowest free CPU index when a thread exits, so the live thread count
 * bounds the indices; past MAX_VCPUS the extra threads share one slot through atomic adds. */
#define MAX_VCPUS 1024
#define MAX_SYMS 65536 /* power of two: open-addressing table */

struct sym_entry {
    const char *name; /* qemu's static string, or one of the range labels below */
    uint64_t count;
};

/* Per-TB data handed to the execution callback. */
struct tb_info {
    uint64_t n_insns;
    struct sym_entry *sym; /* NULL unless symbols=on */
};

static bool inline_mode;
static bool want_symbols;
static char *out_path;

static uint64_t inline_count;
static uint64_t vcpu_count[MAX_VCPUS + 1];
static unsigned int max_vcpu_seen;

static struct sym_entry syms[MAX_SYMS];
static size_t n_syms;
static struct sym_entry sym_overflow = {"[symbol table full: later symbols lumped here]", 0};
static pthread_mutex_t sym_lock = PTHREAD_MUTEX_INITIALIZER;

static const char LABEL_MAIN[] = "[main binary, no symbol]";
static const char LABEL_OTHER[] = "[outside main binary: anonymous or unknown mapping]";

/* Code without a symbol is charged to the file it was mapped from. qemu-user maps the guest's
 * files into its own address space, so the host's /proc/self/maps names the file behind the
 * host address of an instruction. Read on translation only (rare), under sym_lock. */
struct mapping {
    uintptr_t start, end;
    const char *label; /* interned "[libfoo.so (no symbol)]" */
};
#define MAX_MAPPINGS 4096
static struct mapping maps[MAX_MAPPINGS];
static size_t n_maps;

#define MAX_LABELS 1024
static char *labels[MAX_LABELS];
static size_t n_labels;

static const char *intern_label(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base != NULL ? base + 1 : path;
    char buf[300];
    snprintf(buf, sizeof buf, "[%s, no symbol]", base);
    for (size_t i = 0; i < n_labels; i++) {
        if (strcmp(labels[i], buf) == 0) {
            return labels[i];
        }
    }
    if (n_labels == MAX_LABELS) {
        return LABEL_OTHER;
    }
    labels[n_labels] = strdup(buf);
    return labels[n_labels] != NULL ? labels[n_labels++] : LABEL_OTHER;
}

static void read_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    n_maps = 0;
    if (f == NULL) {
        return;
    }
    char line[4352];
    while (n_maps < MAX_MAPPINGS && fgets(line, sizeof line, f) != NULL) {
        unsigned long start, end;
        char perms[8];
        int path_at = 0;
        /* No test of the x bit: qemu maps guest code read-only on the host. */
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &start, &end, perms, &path_at) < 3 ||
            path_at == 0) {
            continue;
        }
        char *path = line + path_at;
        path[strcspn(path, "\n")] = '\0';
        if (path[0] == '\0') {
            continue;
        }
        maps[n_maps].start = start;
        maps[n_maps].end = end;
        maps[n_maps].label = intern_label(path);
        n_maps++;
    }
    fclose(f);
}

static const char *label_of_host_addr(uintptr_t haddr)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        for (size_t i = 0; i < n_maps; i++) {
            if (haddr >= maps[i].start && haddr < maps[i].end) {
                return maps[i].label;
            }
        }
        if (attempt == 0) {
            read_maps(); /* a library mapped since the last read */
        }
    }
    return LABEL_OTHER;
}

static struct sym_entry *sym_lookup(const char *name)
{
    /* Keyed by pointer: qemu hands out the same static string for the same symbol. */
    size_t h = ((uintptr_t)name >> 3) * 0x9E3779B97F4A7C15ull;
    pthread_mutex_lock(&sym_lock);
    struct sym_entry *e = NULL;
    for (size_t i = 0; i < MAX_SYMS; i++) {
        struct sym_entry *s = &syms[(h + i) & (MAX_SYMS - 1)];
        if (s->name == name) {
            e = s;
            break;
        }
        if (s->name == NULL) {
            if (n_syms + 1 >= MAX_SYMS) {
                break;
            }
            s->name = name;
            n_syms++;
            e = s;
            break;
        }
    }
    if (e == NULL) {
        /* Table full: everything new goes to one overflow entry (reported as such). */
        e = &sym_overflow;
    }
    pthread_mutex_unlock(&sym_lock);
    return e;
}

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    const struct tb_info *tb = udata;
    if (vcpu_index < MAX_VCPUS) {
        /* One writer per slot: the guest thread that owns this vCPU. */
        vcpu_count[vcpu_index] += tb->n_insns;
        if (vcpu_index > __atomic_load_n(&max_vcpu_seen, __ATOMIC_RELAXED)) {
            __atomic_store_n(&max_vcpu_seen, vcpu_index, __ATOMIC_RELAXED);
        }
    } else {
        __atomic_fetch_add(&vcpu_count[MAX_VCPUS], tb->n_insns, __ATOMIC_RELAXED);
    }
    if (tb->sym != NULL) {
        __atomic_fetch_add(&tb->sym->count, tb->n_insns, __ATOMIC_RELAXED);
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (inline_mode && !want_symbols) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &inline_count,
                                                 n);
        return;
    }
    /* Lives as long as the translation, which qemu never tells us the end of; a TB is
     * retranslated rarely enough (code flushes) that this is a bounded leak. */
    struct tb_info *info = malloc(sizeof *info);
    if (info == NULL) {
        fprintf(stderr, "insn_count: out of memory\n");
        abort();
    }
    info->n_insns = n;
    info->sym = NULL;
    if (want_symbols) {
        struct qemu_plugin_insn *first = qemu_plugin_tb_get_insn(tb, 0);
        const char *name = qemu_plugin_insn_symbol(first);
        if (name == NULL || name[0] == '\0') {
            uint64_t pc = qemu_plugin_tb_vaddr(tb);
            if (pc >= qemu_plugin_start_code() && pc < qemu_plugin_end_code()) {
                name = LABEL_MAIN;
            } else {
                pthread_mutex_lock(&sym_lock);
                name = label_of_host_addr((uintptr_t)qemu_plugin_insn_haddr(first));
                pthread_mutex_unlock(&sym_lock);
            }
        }
        info->sym = sym_lookup(name);
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, info);
}

static int by_count_desc(const void *a, const void *b)
{
    const struct sym_entry *x = a, *y = b;
    if (x->count != y->count) {
        return x->count < y->count ? 1 : -1;
    }
    if (x->name == NULL || y->name == NULL) {
        return (x->name == NULL) - (y->name == NULL);
    }
    return strcmp(x->name, y->name);
}

static void report(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    FILE *f = NULL;
    if (out_path != NULL) {
        f = fopen(out_path, "w");
        if (f == NULL) {
            fprintf(stderr, "insn_count: cannot write %s\n", out_path);
        }
    }
    char line[512];
    uint64_t total = 0;
    if (inline_mode && !want_symbols) {
        total = inline_count;
    } else {
        for (unsigned int i = 0; i <= MAX_VCPUS; i++) {
            total += __atomic_load_n(&vcpu_count[i], __ATOMIC_RELAXED);
        }
    }
#define EMIT(...)                                    \
    do {                                             \
        snprintf(line, sizeof line, __VA_ARGS__);    \
        fputs(line, f != NULL ? f : stderr);         \
    } while (0)
    EMIT("total %" PRIu64 "\n", total);
    if (!(inline_mode && !want_symbols)) {
        for (unsigned int i = 0; i <= max_vcpu_seen && i < MAX_VCPUS; i++) {
            EMIT("vcpu %u %" PRIu64 "\n", i, vcpu_count[i]);
        }
        if (vcpu_count[MAX_VCPUS] != 0) {
            EMIT("vcpu overflow %" PRIu64 "\n", vcpu_count[MAX_VCPUS]);
        }
    }
    if (want_symbols) {
        /* Sort a copy: guest threads still running may be adding to the live table. */
        pthread_mutex_lock(&sym_lock);
        size_t n = 0;
        struct sym_entry *sorted = calloc(n_syms + 1, sizeof *sorted);
        if (sorted != NULL) {
            for (size_t i = 0; i < MAX_SYMS; i++) {
                if (syms[i].name != NULL) {
                    sorted[n].name = syms[i].name;
                    sorted[n].count = __atomic_load_n(&syms[i].count, __ATOMIC_RELAXED);
                    n++;
                }
            }
            sorted[n].name = sym_overflow.name;
            sorted[n].count = __atomic_load_n(&sym_overflow.count, __ATOMIC_RELAXED);
            n++;
            qsort(sorted, n, sizeof *sorted, by_count_desc);
            for (size_t i = 0; i < n; i++) {
                if (sorted[i].count != 0) {
                    EMIT("sym %" PRIu64 " %s\n", sorted[i].count, sorted[i].name);
                }
            }
            free(sorted);
        } else {
            EMIT("warning out of memory: no symbol report\n");
        }
        pthread_mutex_unlock(&sym_lock);
    }
#undef EMIT
    if (f != NULL) {
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    if (info->system_emulation) {
        fprintf(stderr, "insn_count: written for qemu-user (one vCPU per guest thread)\n");
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        char *arg = argv[i];
        char *eq = strchr(arg, '=');
        if (eq == NULL) {
            fprintf(stderr, "insn_count: argument '%s' is not name=value\n", arg);
            return -1;
        }
        *eq = '\0';
        const char *val = eq + 1;
        if (strcmp(arg, "out") == 0) {
            out_path = strdup(val);
        } else if (strcmp(arg, "mode") == 0) {
            if (strcmp(val, "inline") == 0) {
                inline_mode = true;
            } else if (strcmp(val, "cb") == 0) {
                inline_mode = false;
            } else {
                fprintf(stderr, "insn_count: mode=%s (expected cb or inline)\n", val);
                return -1;
            }
        } else if (strcmp(arg, "symbols") == 0) {
            if (!qemu_plugin_bool_parse(arg, val, &want_symbols)) {
                fprintf(stderr, "insn_count: symbols=%s is not a boolean\n", val);
                return -1;
            }
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s' (out, mode, symbols)\n", arg);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, report, NULL);
    return 0;
}
