/*
 * The few libxl, libxenstore and libxenctrl calls the Jitsu Xen backend
 * makes, behind a flat C interface that Rust binds by hand (src/toolstack.rs).
 *
 * Why C and not bindings to libxl.h: libxl's structures are generated from
 * its IDL, large (libxl_domain_build_info is a union over domain types) and
 * versioned by LIBXL_API_VERSION; compiled against the installed header, this
 * file gets their layout right by construction, and Rust sees only the small
 * structures below.
 */
#define LIBXL_API_VERSION 0x041400
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxl.h>
#include <libxl_utils.h>
#include <xenctrl.h>
#include <xenstore.h>
#include <xentoollog.h>
#include <xen/hvm/params.h>
#include <xen/hvm/save.h>
#include <xen/sched.h>

struct jx {
    libxl_ctx *ctx;
    xentoollog_logger_stdiostream *logger;
    struct xs_handle *xs;
    xc_interface *xc;
};

/* What Rust asks for; strings are NUL-terminated, optional ones NULL. */
struct jx_spec {
    const char *name;
    const char *kernel;
    const char *ramdisk;
    const char *cmdline;
    uint64_t memory_kib;
    uint32_t vcpus;
    const char *bridge;     /* NULL: no vif */
    uint8_t mac[6];
};

struct jx_state {
    int exists;
    int shutdown;
    int dying;
    int paused;
    int reason;             /* libxl_shutdown_reason */
};

struct jx_regs {
    uint64_t rip, rsp, rflags, cr0, cr2, cr3, rax;
};

void jx_close(struct jx *jx)
{
    if (!jx)
        return;
    if (jx->xc)
        xc_interface_close(jx->xc);
    if (jx->xs)
        xs_close(jx->xs);
    if (jx->ctx)
        libxl_ctx_free(jx->ctx);
    if (jx->logger)
        xtl_logger_destroy((xentoollog_logger *)jx->logger);
    free(jx);
}

/* level: 0 errors only, 1 also warnings and progress, 2 debug. */
struct jx *jx_open(int level)
{
    xentoollog_level min = level >= 2 ? XTL_DEBUG : level == 1 ? XTL_INFO : XTL_ERROR;
    struct jx *jx = calloc(1, sizeof(*jx));
    if (!jx)
        return NULL;
    jx->logger = xtl_createlogger_stdiostream(stderr, min, 0);
    if (!jx->logger)
        goto fail;
    if (libxl_ctx_alloc(&jx->ctx, LIBXL_VERSION, 0, (xentoollog_logger *)jx->logger))
        goto fail;
    jx->xs = xs_open(0);
    if (!jx->xs)
        goto fail;
    jx->xc = xc_interface_open(NULL, NULL, 0);
    if (!jx->xc)
        goto fail;
    return jx;
fail:
    {
        int saved = errno;
        jx_close(jx);
        errno = saved ? saved : EIO;
        return NULL;
    }
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Builds the domain and leaves it paused; on failure libxl has removed
 * whatever it had made. Returns 0 or a libxl error code. */
int jx_create_paused(struct jx *jx, const struct jx_spec *spec, uint32_t *domid)
{
    libxl_domain_config config;
    int rc;

    libxl_domain_config_init(&config);
    config.c_info.type = LIBXL_DOMAIN_TYPE_PVH;
    config.c_info.name = strdup(spec->name);
    libxl_domain_build_info_init_type(&config.b_info, LIBXL_DOMAIN_TYPE_PVH);
    config.b_info.kernel = strdup(spec->kernel);
    config.b_info.ramdisk = dup_or_null(spec->ramdisk);
    config.b_info.cmdline = dup_or_null(spec->cmdline);
    config.b_info.max_memkb = spec->memory_kib;
    config.b_info.target_memkb = spec->memory_kib;
    config.b_info.max_vcpus = spec->vcpus;
    if (libxl_cpu_bitmap_alloc(jx->ctx, &config.b_info.avail_vcpus, spec->vcpus)) {
        libxl_domain_config_dispose(&config);
        return ERROR_NOMEM;
    }
    for (uint32_t i = 0; i < spec->vcpus; i++)
        libxl_bitmap_set(&config.b_info.avail_vcpus, i);
    /* Keep the domain after it ends, so that its status and registers can
     * be read; the backend destroys it. */
    config.on_poweroff = LIBXL_ACTION_ON_SHUTDOWN_PRESERVE;
    config.on_reboot = LIBXL_ACTION_ON_SHUTDOWN_PRESERVE;
    config.on_watchdog = LIBXL_ACTION_ON_SHUTDOWN_PRESERVE;
    config.on_crash = LIBXL_ACTION_ON_SHUTDOWN_PRESERVE;
    if (spec->bridge) {
        config.nics = calloc(1, sizeof(*config.nics));
        if (!config.nics) {
            libxl_domain_config_dispose(&config);
            return ERROR_NOMEM;
        }
        config.num_nics = 1;
        libxl_device_nic_init(&config.nics[0]);
        config.nics[0].devid = 0;
        config.nics[0].nictype = LIBXL_NIC_TYPE_VIF;
        config.nics[0].bridge = strdup(spec->bridge);
        memcpy(config.nics[0].mac, spec->mac, 6);
    }
    rc = libxl_domain_create_new(jx->ctx, &config, domid, NULL, NULL);
    libxl_domain_config_dispose(&config);
    if (rc)
        return rc;
#if defined(__x86_64__)
    /* A triple fault is a crash, not the reboot Xen makes of it by default:
     * a unikernel that faults with no handler left must be reported. (On
     * arm64 there is no triple fault: a guest's vectors report and crash.) */
    if (xc_hvm_param_set(jx->xc, *domid, HVM_PARAM_TRIPLE_FAULT_REASON, SHUTDOWN_crash)) {
        int saved = errno;
        libxl_domain_destroy(jx->ctx, *domid, NULL);
        errno = saved;
        return ERROR_FAIL;
    }
#endif
    return 0;
}

int jx_unpause(struct jx *jx, uint32_t domid)
{
    return libxl_domain_unpause(jx->ctx, domid, NULL);
}

int jx_pause(struct jx *jx, uint32_t domid)
{
    return libxl_domain_pause(jx->ctx, domid, NULL);
}

/* Destroys the domain and its devices (the vif, its hotplug script run). */
int jx_destroy(struct jx *jx, uint32_t domid)
{
    return libxl_domain_destroy(jx->ctx, domid, NULL);
}

/* The id of the domain named `name`: 0 and *domid, or a libxl error code
 * (ERROR_INVAL when there is none). */
int jx_domid_by_name(struct jx *jx, const char *name, uint32_t *domid)
{
    return libxl_name_to_domid(jx->ctx, name, domid);
}

int jx_state(struct jx *jx, uint32_t domid, struct jx_state *out)
{
    libxl_dominfo info;
    int rc;

    memset(out, 0, sizeof(*out));
    libxl_dominfo_init(&info);
    rc = libxl_domain_info(jx->ctx, &info, domid);
    if (rc == ERROR_DOMAIN_NOTFOUND) {
        libxl_dominfo_dispose(&info);
        return 0;
    }
    if (rc == 0) {
        out->exists = 1;
        out->shutdown = info.shutdown;
        out->dying = info.dying;
        out->paused = info.paused;
        out->reason = info.shutdown_reason;
    }
    libxl_dominfo_dispose(&info);
    return rc;
}

/* The pty xenconsoled made for the domain's console; free with jx_free. */
char *jx_console_tty(struct jx *jx, uint32_t domid)
{
    char *path = NULL;
    if (libxl_console_get_tty(jx->ctx, domid, 0, LIBXL_CONSOLE_TYPE_PV, &path))
        return NULL;
    return path;
}

/* XenStore, through the toolstack's own connection. */
int jx_xs_write(struct jx *jx, const char *path, const char *value)
{
    return xs_write(jx->xs, XBT_NULL, path, value, strlen(value)) ? 0 : -1;
}

char *jx_xs_read(struct jx *jx, const char *path)
{
    unsigned int len;
    return xs_read(jx->xs, XBT_NULL, path, &len);
}

/* Watches `path` (or a special path such as @releaseDomain, which
 * xenstored fires when a domain shuts down or dies); returns the fd that
 * becomes readable when any of the handle's watches fires. */
int jx_watch(struct jx *jx, const char *path)
{
    if (!xs_watch(jx->xs, path, "jitsu"))
        return -1;
    return xs_fileno(jx->xs);
}

/* The fd of the handle's watches (xs_fileno makes it on first use). */
int jx_watch_fd(struct jx *jx)
{
    return xs_fileno(jx->xs);
}

int jx_unwatch(struct jx *jx, const char *path)
{
    return xs_unwatch(jx->xs, path, "jitsu") ? 0 : -1;
}

/* Reads the watch events that are waiting (they say nothing more). */
void jx_watch_drain(struct jx *jx)
{
    unsigned int n;
    char **event;
    while ((event = xs_check_watch(jx->xs)) != NULL)
        free(event);
    (void)n;
}

#if defined(__aarch64__)
/* vCPU 0's registers, in the x86 names' slots: pc, sp (EL1), cpsr, x0,
 * sctlr, (nothing), ttbr0. */
int jx_vcpu_regs(struct jx *jx, uint32_t domid, struct jx_regs *out)
{
    vcpu_guest_context_any_t ctx;
    if (xc_vcpu_getcontext(jx->xc, domid, 0, &ctx))
        return -1;
    out->rip = ctx.c.user_regs.pc64;
    out->rsp = ctx.c.user_regs.sp_el1;
    out->rflags = ctx.c.user_regs.cpsr;
    out->rax = ctx.c.user_regs.x0;
    out->cr0 = ctx.c.sctlr;
    out->cr2 = 0;
    out->cr3 = ctx.c.ttbr0;
    return 0;
}
#else
/* A PVH vCPU's registers, from its saved HVM context. */
int jx_vcpu_regs(struct jx *jx, uint32_t domid, struct jx_regs *out)
{
    struct hvm_hw_cpu cpu;
    if (xc_domain_hvm_getcontext_partial(jx->xc, domid, HVM_SAVE_CODE(CPU), 0, &cpu, sizeof(cpu)))
        return -1;
    out->rip = cpu.rip;
    out->rsp = cpu.rsp;
    out->rflags = cpu.rflags;
    out->cr0 = cpu.cr0;
    out->cr2 = cpu.cr2;
    out->cr3 = cpu.cr3;
    out->rax = cpu.rax;
    return 0;
}
#endif

void jx_free(void *p)
{
    free(p);
}
