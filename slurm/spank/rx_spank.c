/*
 * rx_spank: `--rx-project=NAME` for srun, sbatch and salloc. Every task of a job step then runs
 * in the project's container environment: the plugin hands the task to
 * `rxctl run --project NAME -- ARGV...`, which asks rxd for the project's batch plan (checking
 * that the job's user is a member) and replaces itself with `apptainer exec`. All knowledge of
 * projects, images and Apptainer stays in rxctl and rxd; this file only passes the task on.
 *
 * plugstack.conf:  optional /usr/lib/rxslurm/rx_spank.so rxctl=/usr/bin/rxctl
 *
 * Which steps: every normal step of a job that asked for --rx-project. The batch script, salloc's
 * interactive step and the extern step stay on the host, so that the `srun` inside a batch
 * script still works; sbatch's and salloc's value reaches the steps started inside them (see
 * slurm_spank_task_init).
 *
 * How the task is handed on depends on Slurm:
 *  - 23.11 and later: spank_prepend_task_argv puts `rxctl run ... --` before the task's argv,
 *    and slurmstepd goes on exactly as without the plugin.
 *  - older (22.05 here): slurm_spank_task_init execve()s rxctl itself, with the task's argv and
 *    environment (S_JOB_ARGV, S_JOB_ENV). slurmstepd calls it after the task plugins' pre-launch
 *    (cgroups, CPU binding) and the GRES environment (CUDA_VISIBLE_DEVICES), as the job's user in
 *    the job's working directory, so those all hold. What slurmstepd would have done after it,
 *    and which this path therefore skips: the SELinux exec context, TaskProlog and
 *    --task-prolog (and the variables they export), TMPDIR's default and its creation, the stop
 *    for a parallel debugger, the PATH lookup of argv[0] (apptainer looks the command up inside
 *    the container instead, which is what a container task wants), the propagated resource
 *    limits and RSS/VSIZE limits (set_user_limits), --bcast's file naming and --container
 *    (OCI). Sites that need those use Slurm 23.11 or later, or `srun rxctl run` (which
 *    slurmstepd starts after all of them).
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(rx_spank, 1);

#define RXCTL_KEY "rxctl="
/* How srun reads --rx-project from its environment: "SLURM_SPANK_" + the option's variable. */
#define PROJECT_FOR_SRUN "SLURM_SPANK__SLURM_SPANK_OPTION_rx_spank_rx_project"
/* rxctl run's exit status when rx-slurm itself fails (as docker run's 125). */
#define RX_FAILED 125

/* plugstack.conf's arguments. */
struct rx_config {
	const char *rxctl; /* rxctl's absolute path; NULL: not configured */
	const char *bad;   /* the first argument that is not rxctl=/absolute/path; NULL: none */
};

static struct rx_config config = {.rxctl = NULL, .bad = NULL};

/* The project named by --rx-project; NULL: the job did not ask. */
static char *project = NULL;

static int set_project(int val, const char *optarg, int remote);

/* Registered in slurm_spank_init: sbatch and salloc ignore a plugin's static option table. */
static struct spank_option options[] = {
	{"rx-project", "NAME",
	 "rx-slurm: run every task of the step in project NAME's container environment "
	 "(its image, installed software and /workspace; the batch script itself stays on the host)",
	 1, 0, set_project},
	SPANK_OPTIONS_TABLE_END};

/* Slurm may call an option's callback more than once (command line, then environment). */
static int set_project(int val, const char *optarg, int remote)
{
	char *copy;

	(void)val;
	(void)remote;
	if (optarg == NULL || optarg[0] == '\0') {
		slurm_error("rx: --rx-project needs a project name");
		return -1;
	}
	/* rxd checks the whole name; a leading '-' must not reach rxctl as an option. */
	if (optarg[0] < 'a' || optarg[0] > 'z') {
		slurm_error("rx: --rx-project: '%s' is not a project name (they start with a-z)",
			    optarg);
		return -1;
	}
	copy = strdup(optarg);
	if (copy == NULL) {
		slurm_error("rx: --rx-project: %s", strerror(errno));
		return -1;
	}
	free(project);
	project = copy;
	return 0;
}

/* The arguments stay valid for the plugin's life (Slurm keeps plugstack.conf's words). */
static void parse_config(int ac, char **av)
{
	int i;

	config.rxctl = NULL;
	config.bad = NULL;
	for (i = 0; i < ac; i++) {
		if (strncmp(av[i], RXCTL_KEY, strlen(RXCTL_KEY)) != 0 ||
		    av[i][strlen(RXCTL_KEY)] != '/') {
			config.bad = av[i];
			return;
		}
		config.rxctl = av[i] + strlen(RXCTL_KEY);
	}
}

static void report_config(void)
{
	slurm_error("rx: plugstack.conf: '%s' for rx_spank.so is not rxctl=/absolute/path",
		    config.bad);
}

/*
 * A bad plugstack.conf line stops srun, sbatch and salloc at once (where its error is read). In
 * slurmstepd it fails only the tasks that asked for a project: failing here would unload an
 * optional plugin, and those tasks would run on the host.
 */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
	struct spank_option *opt;
	spank_err_t err;

	parse_config(ac, av);
	switch (spank_context()) {
	case S_CTX_LOCAL:
	case S_CTX_ALLOCATOR:
		if (config.bad != NULL) {
			report_config();
			return -1;
		}
		break;
	case S_CTX_REMOTE:
		break;
	default:
		return 0;
	}
	for (opt = options; opt->name != NULL; opt++) {
		err = spank_option_register(sp, opt);
		if (err != ESPANK_SUCCESS) {
			slurm_error("rx: cannot register --%s: %s", opt->name, spank_strerror(err));
			return -1;
		}
	}
	return 0;
}

#if SLURM_VERSION_NUMBER >= SLURM_VERSION_NUM(23, 11, 0)
static int hand_over(spank_t sp)
{
	const char *head[] = {config.rxctl, "run", "--project", project, "--"};
	spank_err_t err;

	err = spank_prepend_task_argv(sp, sizeof(head) / sizeof(head[0]), head);
	if (err != ESPANK_SUCCESS) {
		slurm_error("rx: task: cannot run the task through %s: %s", config.rxctl,
			    spank_strerror(err));
		return -1;
	}
	return 0;
}
#else
/* The argv `rxctl run --project NAME -- ARGV...`, NULL-terminated; NULL when out of memory. */
static const char **run_argv(int argc, char **argv)
{
	const char *head[] = {config.rxctl, "run", "--project", project, "--"};
	const int n = sizeof(head) / sizeof(head[0]);
	const char **out;
	int i;

	out = calloc((size_t)n + (size_t)argc + 1, sizeof(*out));
	if (out == NULL)
		return NULL;
	for (i = 0; i < n; i++)
		out[i] = head[i];
	for (i = 0; i < argc; i++)
		out[n + i] = argv[i];
	return out;
}

static int hand_over(spank_t sp)
{
	int argc = 0;
	char **argv = NULL;
	char **env = NULL;
	const char **args = NULL;
	spank_err_t err;
	int rv = -1;

	err = spank_get_item(sp, S_JOB_ARGV, &argc, &argv);
	if (err != ESPANK_SUCCESS) {
		slurm_error("rx: task: cannot read the task's argv: %s", spank_strerror(err));
		goto fail;
	}
	err = spank_get_item(sp, S_JOB_ENV, &env);
	if (err != ESPANK_SUCCESS) {
		slurm_error("rx: task: cannot read the task's environment: %s", spank_strerror(err));
		goto fail;
	}
	args = run_argv(argc, argv);
	if (args == NULL) {
		slurm_error("rx: task: %s", strerror(errno));
		goto fail;
	}
	execve(config.rxctl, (char *const *)args, env);
	slurm_error("rx: task: cannot run %s: %s", config.rxctl, strerror(errno));
fail:
	free(args);
	return rv;
}
#endif

/*
 * In the task, as the job's user, just before slurmstepd would exec it. A special step (the
 * batch script, salloc's interactive step, the extern step) is left alone; for the batch script
 * the project is put in its environment the way srun reads an option from its environment
 * (SLURM_SPANK_ + the option's variable), so each `srun` in the script runs its tasks in the
 * container, as if it had been given --rx-project itself.
 */
static int task_init(spank_t sp)
{
	uint32_t step_id = 0;
	spank_err_t err;

	err = spank_get_item(sp, S_JOB_STEPID, &step_id);
	if (err != ESPANK_SUCCESS) {
		slurm_error("rx: task: cannot read the step id: %s", spank_strerror(err));
		return -1;
	}
	if (step_id > SLURM_MAX_NORMAL_STEP_ID) {
		if (step_id != SLURM_BATCH_SCRIPT)
			return 0;
		err = spank_setenv(sp, PROJECT_FOR_SRUN, project, 1);
		if (err != ESPANK_SUCCESS) {
			slurm_error("rx: batch script: cannot pass --rx-project to its steps: %s",
				    spank_strerror(err));
			return -1;
		}
		return 0;
	}
	if (config.bad != NULL) {
		report_config();
		return -1;
	}
	if (config.rxctl == NULL) {
		slurm_error("rx: --rx-project: plugstack.conf names no rxctl=/path for rx_spank.so");
		return -1;
	}
	return hand_over(sp);
}

/*
 * Slurm ignores the errors of an `optional` plugin, and would then run the task on the host,
 * outside the environment it asked for. So a task that asked for a project and cannot have it
 * ends here, after its one line, with rxctl's own failure status.
 */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	if (project == NULL || spank_context() != S_CTX_REMOTE)
		return 0;
	if (task_init(sp) < 0)
		_exit(RX_FAILED);
	return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	(void)sp;
	(void)ac;
	(void)av;
	free(project);
	project = NULL;
	return 0;
}
