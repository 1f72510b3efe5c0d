/*
 * The installed spank.h plus the one call Slurm 23.11 added that rx_spank.c uses, declared as
 * Slurm 23.11's spank.h declares it. Test-only (see slurm_version.h here).
 */
#ifndef RX_TEST_SPANK_2311_H
#define RX_TEST_SPANK_2311_H
#include_next <slurm/spank.h>
spank_err_t spank_prepend_task_argv(spank_t spank, int argc, const char *argv[]);
#endif
