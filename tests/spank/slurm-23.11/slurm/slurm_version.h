/*
 * Slurm 23.11's version number over the installed (22.05) headers, so that tests compile and
 * drive rx_spank.c's spank_prepend_task_argv path (tests/test_spank_plugin.py). Test-only.
 */
#ifndef _SLURM_VERSION_H_
#define _SLURM_VERSION_H_
#define SLURM_VERSION_NUMBER 0x170b00
#define SLURM_VERSION_NUM(a, b, c) (((a) << 16) + ((b) << 8) + (c))
#define SLURM_VERSION_MAJOR(a) (((a) >> 16) & 0xff)
#define SLURM_VERSION_MINOR(a) (((a) >> 8) & 0xff)
#define SLURM_VERSION_MICRO(a) ((a) & 0xff)
#endif
