#!/usr/bin/env bash
# Runs vega-migrate as a one-off ECS task in an environment and exits with its exit code.
#
#   scripts/aws/run-migrations.sh <env> [vega-migrate arguments...]     (default: up)
#
# Settings come from infra/environments/<env>.env (KEY=VALUE lines; see example.env), or the
# directory in VEGA_ENVIRONMENTS_DIR. Exit codes: the container's own (0 applied, 3 pending for
# `check`, 4 unknown versions, 75 another runner held the lock), 1 when the task could not be
# placed, stopped without an exit code, or did not stop in time, 2 for bad usage.
set -euo pipefail

die() { printf 'run-migrations: %s\n' "$*" >&2; exit "${2:-1}"; }
usage() { die "usage: $0 <env> [vega-migrate arguments...]" 2; }

[ $# -ge 1 ] || usage
env_name=$1
shift
[[ $env_name =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "environment name '$env_name' must be lowercase letters, digits, - and _" 2
[ $# -gt 0 ] || set -- up
for arg in "$@"; do
  [[ $arg =~ ^[A-Za-z0-9_.:=/-]+$ ]] || die "argument '$arg' has characters this script does not pass through" 2
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
settings=${VEGA_ENVIRONMENTS_DIR:-$root/infra/environments}/$env_name.env
[ -f "$settings" ] || die "no settings for environment '$env_name': $settings does not exist (copy infra/environments/example.env)" 2

# KEY=VALUE lines only: the file is data, not a script.
declare -A conf=()
while IFS= read -r line || [ -n "$line" ]; do
  [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
  [[ $line =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]] || die "$settings: not a KEY=VALUE line: $line" 2
  conf[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
done <"$settings"
need() { [ -n "${conf[$1]:-}" ] || die "$settings: $1 is not set" 2; printf '%s' "${conf[$1]}"; }

cluster=$(need ECS_CLUSTER)
task_definition=$(need MIGRATE_TASK_DEFINITION)
subnets=$(need SUBNET_IDS)
security_groups=$(need SECURITY_GROUP_IDS)
container=${conf[MIGRATE_CONTAINER]:-migrate}
launch_type=${conf[LAUNCH_TYPE]:-FARGATE}
# `aws ecs wait tasks-stopped` gives up after 100 polls 6 s apart (10 minutes, exit 255);
# long migrations (an index built concurrently on a big table) need several rounds.
max_rounds=${conf[MAX_WAIT_ROUNDS]:-12}
[[ $max_rounds =~ ^[1-9][0-9]*$ ]] || die "$settings: MAX_WAIT_ROUNDS must be a positive number" 2
region_args=()
[ -z "${conf[AWS_REGION]:-}" ] || region_args=(--region "${conf[AWS_REGION]}")

command -v aws >/dev/null || die "the aws CLI is not on PATH"

command_json=$(printf '"%s",' "$@")
overrides="{\"containerOverrides\":[{\"name\":\"$container\",\"command\":[${command_json%,}]}]}"
network="awsvpcConfiguration={subnets=[$subnets],securityGroups=[$security_groups],assignPublicIp=DISABLED}"

echo "run-migrations: starting '$task_definition' on $cluster ($env_name): vega-migrate $*" >&2
# run-task exits 0 even when it places no task (capacity, bad subnets): read failures[] too.
placed=$(aws ecs run-task "${region_args[@]}" --cluster "$cluster" \
  --task-definition "$task_definition" --launch-type "$launch_type" --count 1 \
  --started-by "vega-migrate-$env_name" --network-configuration "$network" \
  --overrides "$overrides" \
  --query '[tasks[0].taskArn, length(failures), failures[0].reason, failures[0].detail]' \
  --output text) || die "aws ecs run-task failed"
IFS=$'\t' read -r task_arn failure_count failure_reason failure_detail <<<"$placed"
if [ "${failure_count:-0}" != "0" ] || [ -z "$task_arn" ] || [ "$task_arn" = "None" ]; then
  die "the task was not started: ${failure_reason:-no task returned} ${failure_detail:+($failure_detail)}"
fi
echo "run-migrations: task $task_arn" >&2

stopped=no
for round in $(seq 1 "$max_rounds"); do
  rc=0
  aws ecs wait tasks-stopped "${region_args[@]}" --cluster "$cluster" --tasks "$task_arn" || rc=$?
  if [ "$rc" -eq 0 ]; then stopped=yes; break; fi
  [ "$rc" -eq 255 ] || die "aws ecs wait failed (exit $rc) for $task_arn"
  echo "run-migrations: still running after wait round $round of $max_rounds" >&2
done
[ "$stopped" = yes ] || die "task $task_arn had not stopped after $max_rounds wait rounds; it is still running (the migration lock keeps a second run from overlapping it)"

result=$(aws ecs describe-tasks "${region_args[@]}" --cluster "$cluster" --tasks "$task_arn" \
  --query "tasks[0].[containers[?name=='$container']|[0].exitCode, stopCode, stoppedReason]" \
  --output text) || die "aws ecs describe-tasks failed for $task_arn"
IFS=$'\t' read -r exit_code stop_code stopped_reason <<<"$result"
# No exit code means the container never ran: image pull, secrets or network failed first.
if ! [[ ${exit_code:-} =~ ^[0-9]+$ ]]; then
  die "task $task_arn stopped without an exit code (${stop_code:-unknown}): ${stopped_reason:-no reason given}"
fi
echo "run-migrations: vega-migrate exited with $exit_code (${stop_code:-}: ${stopped_reason:-})" >&2
exit "$exit_code"
