/*
 * A stand-in for slurmstepd, srun and sbatch around rx_spank.c, for tests without Slurm
 * (tests/test_spank_plugin.py): Slurm's side of the SPANK API, answered from the command line.
 *
 *   harness CONTEXT STEP PROJECT [CONFIG...] -- TASK_ARGV...
 *
 * CONTEXT is local, allocator or remote; STEP a step id (batch, extern or a number); PROJECT the
 * value given to --rx-project ("-": none). It calls slurm_spank_init with CONFIG, the option's
 * callback, then slurm_spank_task_init with TASK_ARGV and the environment RX_TASK_ENV=yes. What
 * Slurm would be asked to do is printed on stdout ("setenv NAME=VALUE", and on Slurm 23.11 and
 * later "prepend" and the words put before the task's argv); "continued" means the task would go
 * on (as without the plugin, or with the prepended words); init's failure prints "init failed",
 * exit 1.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

int slurm_spank_init(spank_t sp, int ac, char **av);
int slurm_spank_task_init(spank_t sp, int ac, char **av);
int slurm_spank_exit(spank_t sp, int ac, char **av);

static spank_context_t context = S_CTX_ERROR;
static uint32_t step_id = 0;
static struct spank_option *registered = NULL;
static int task_argc = 0;
static char **task_argv = NULL;
static char *task_env[] = {"RX_TASK_ENV=yes", NULL};

spank_context_t spank_context(void)
{
	return context;
}

spank_err_t spank_option_register(spank_t sp, struct spank_option *opt)
{
	(void)sp;
	registered = opt;
	return ESPANK_SUCCESS;
}

spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...)
{
	va_list ap;
	spank_err_t rv = ESPANK_SUCCESS;

	(void)sp;
	va_start(ap, item);
	switch (item) {
	case S_JOB_STEPID:
		*va_arg(ap, uint32_t *) = step_id;
		break;
	case S_JOB_ARGV:
		*va_arg(ap, int *) = task_argc;
		*va_arg(ap, char ***) = task_argv;
		break;
	case S_JOB_ENV:
		*va_arg(ap, char ***) = task_env;
		break;
	default:
		rv = ESPANK_BAD_ARG;
	}
	va_end(ap);
	return rv;
}

spank_err_t spank_setenv(spank_t sp, const char *var, const char *val, int overwrite)
{
	(void)sp;
	(void)overwrite;
	printf("setenv %s=%s\n", var, val);
	return ESPANK_SUCCESS;
}

#if SLURM_VERSION_NUMBER >= SLURM_VERSION_NUM(23, 11, 0)
spank_err_t spank_prepend_task_argv(spank_t sp, int argc, const char *argv[])
{
	int i;

	(void)sp;
	printf("prepend");
	for (i = 0; i < argc; i++)
		printf(" %s", argv[i]);
	printf("\n");
	return ESPANK_SUCCESS;
}
#endif

const char *spank_strerror(spank_err_t err)
{
	(void)err;
	return "harness error";
}

void slurm_error(const char *format, ...)
{
	va_list ap;

	va_start(ap, format);
	vfprintf(stderr, format, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static spank_context_t context_named(const char *name)
{
	if (strcmp(name, "local") == 0)
		return S_CTX_LOCAL;
	if (strcmp(name, "allocator") == 0)
		return S_CTX_ALLOCATOR;
	if (strcmp(name, "remote") == 0)
		return S_CTX_REMOTE;
	return S_CTX_ERROR;
}

static uint32_t step_named(const char *name)
{
	if (strcmp(name, "batch") == 0)
		return SLURM_BATCH_SCRIPT;
	if (strcmp(name, "extern") == 0)
		return SLURM_EXTERN_CONT;
	return (uint32_t)strtoul(name, NULL, 10);
}

int main(int argc, char **argv)
{
	int dashes;

	if (argc < 5)
		return 2;
	context = context_named(argv[1]);
	step_id = step_named(argv[2]);
	for (dashes = 4; dashes < argc && strcmp(argv[dashes], "--") != 0; dashes++)
		;
	task_argc = argc - dashes - 1;
	task_argv = argv + dashes + 1;
	if (slurm_spank_init(NULL, dashes - 4, argv + 4) != 0) {
		printf("init failed\n");
		return 1;
	}
	if (strcmp(argv[3], "-") != 0) {
		if (registered == NULL || registered->cb(0, argv[3], 1) != 0) {
			printf("option refused\n");
			return 1;
		}
	}
	if (slurm_spank_task_init(NULL, dashes - 4, argv + 4) == 0)
		printf("continued\n");
	slurm_spank_exit(NULL, 0, NULL);
	return 0;
}
