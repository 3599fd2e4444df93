/*
 * emu_config.c - the emulator's environment (PROTOCOL.md, "Environment").
 * A bad value aborts the VMM at start: a misconfigured run must not pass.
 */
#include "emu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

EmuConfig emu_config;

static void die(const char *var, const char *value, const char *why) {
    fprintf(stderr, "heki-kvm-emu: %s=%s: %s\n", var, value, why);
    abort();
}

/* The pinnable CR4 bits the host CPU has, from the flags the kernel shows
   (what __read_cr4() would report on a Linux host with these features on). */
static uint64_t host_cr4_from_cpuinfo(void) {
    static const struct { const char *flag; uint64_t bit; } map[] = {
        {"smep", FK_CR4_SMEP}, {"smap", FK_CR4_SMAP},
        {"umip", FK_CR4_UMIP}, {"fsgsbase", FK_CR4_FSGSBASE},
    };
    const uint64_t pinnable = FK_PINNABLE_CR4_V2 | FK_PINNABLE_CR4_V3;
    uint64_t cr4 = FK_DEFAULT_HOST_CR4 & ~pinnable;
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f)
        return cr4;
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        char *colon = strchr(line, ':');
        if (!colon)
            break;
        for (char *save = NULL, *tok = strtok_r(colon + 1, " \n", &save); tok;
             tok = strtok_r(NULL, " \n", &save))
            for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
                if (strcmp(tok, map[i].flag) == 0)
                    cr4 |= map[i].bit;
        break; /* the first CPU speaks for all */
    }
    fclose(f);
    return cr4;
}

void emu_config_load(void) {
    const char *v;

    v = getenv("HEKI_EMU_ABI");
    if (!v || strcmp(v, "v2") == 0)
        emu_config.profile = fk_profile(FK_PROFILE_V2);
    else if (strcmp(v, "v3") == 0)
        emu_config.profile = fk_profile(FK_PROFILE_V3);
    else
        die("HEKI_EMU_ABI", v, "expected v2 or v3");

    v = getenv("HEKI_EMU_HEKI");
    if (!v || strcmp(v, "on") == 0)
        emu_config.heki_built = true;
    else if (strcmp(v, "off") == 0)
        emu_config.heki_built = false;
    else
        die("HEKI_EMU_HEKI", v, "expected on or off");

    emu_config.host_cr0 = FK_DEFAULT_HOST_CR0;
    v = getenv("HEKI_EMU_HOST_CR4");
    if (v) {
        char *end = NULL;
        errno = 0;
        unsigned long long cr4 = strtoull(v, &end, 16);
        if (!*v || *end || errno || v[0] == '-')
            die("HEKI_EMU_HOST_CR4", v, "expected a hexadecimal CR4 value");
        emu_config.host_cr4 = cr4;
    } else {
        emu_config.host_cr4 = host_cr4_from_cpuinfo();
    }

    v = getenv("HEKI_EMU_TRACE");
    if (v && !*v)
        die("HEKI_EMU_TRACE", v, "expected a file path");
    emu_config.trace_path = v;
}
