#!/usr/bin/env bash
# Tests run-migrations.sh's control flow against a fake `aws` on PATH that records each call
# and plays a scenario: success, placement failure, non-zero exit, missing exit code, a wait
# that needs several rounds, a wait that never ends, and bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/envs"

cat >"$work/envs/test.env" <<'ENV'
# a comment, then the settings
AWS_REGION=eu-west-1
ECS_CLUSTER=vega-test
MIGRATE_TASK_DEFINITION=vega-test-migrate:7
SUBNET_IDS=subnet-a,subnet-b
SECURITY_GROUP_IDS=sg-migrate
MAX_WAIT_ROUNDS=3
ENV

# The fake answers the script's --query/--output text calls the way the real CLI would
# print them. FAKE_WAITS lists the exit code of each successive `ecs wait` call.
cat >"$work/bin/aws" <<'FAKE'
#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_CALLS"
case "$1 $2" in
  "ecs run-task")
    case $FAKE_SCENARIO in
      placement) printf 'None\t1\tRESOURCE:MEMORY\tnot enough memory in the cluster\n' ;;
      *) printf 'arn:aws:ecs:eu-west-1:1:task/vega-test/abc\t0\tNone\tNone\n' ;;
    esac ;;
  "ecs wait")
    n=$(grep -c '^ecs wait' "$FAKE_CALLS")
    codes=(${FAKE_WAITS:-0})
    exit "${codes[$((n - 1))]:-${codes[-1]}}" ;;
  "ecs describe-tasks")
    case $FAKE_SCENARIO in
      fails) printf '3\tEssentialContainerExited\tEssential container in task exited\n' ;;
      no-exit-code) printf 'None\tTaskFailedToStart\tResourceInitializationError: unable to pull secrets\n' ;;
      *) printf '0\tEssentialContainerExited\tEssential container in task exited\n' ;;
    esac ;;
  *) echo "fake aws: unexpected call: $*" >&2; exit 99 ;;
esac
FAKE
chmod +x "$work/bin/aws"

failures=0
# run <name> <expected exit> <scenario> <waits> [args...]: runs the script, checks its exit.
run() {
  local name=$1 expected=$2 scenario=$3 waits=$4
  shift 4
  : >"$work/calls"
  set +e
  PATH="$work/bin:$PATH" FAKE_CALLS="$work/calls" FAKE_SCENARIO=$scenario FAKE_WAITS=$waits \
    VEGA_ENVIRONMENTS_DIR="$work/envs" "$here/run-migrations.sh" "$@" >"$work/out" 2>&1
  local got=$?
  set -e
  if [ "$got" -ne "$expected" ]; then
    echo "FAIL $name: exit $got, expected $expected" >&2
    sed 's/^/    /' "$work/out" "$work/calls" >&2
    failures=$((failures + 1))
    return 1
  fi
  echo "ok   $name" >&2
}
# expect <name> <pattern> <file>: the file (out or calls) matches the extended regex.
expect() {
  if ! grep -Eq -- "$2" "$work/$3"; then
    echo "FAIL $1: $3 does not match /$2/" >&2
    sed 's/^/    /' "$work/$3" >&2
    failures=$((failures + 1))
  fi
}
calls() { grep -c "^ecs $1" "$work/calls" || true; }

if run success 0 ok 0 test; then
  expect "run-task arguments" '^ecs run-task --region eu-west-1 --cluster vega-test --task-definition vega-test-migrate:7 --launch-type FARGATE --count 1 --started-by vega-migrate-test ' calls
  expect "network configuration" 'awsvpcConfiguration=\{subnets=\[subnet-a,subnet-b\],securityGroups=\[sg-migrate\],assignPublicIp=DISABLED\}' calls
  expect "default command" '"containerOverrides":\[\{"name":"migrate","command":\["up"\]\}\]' calls
  expect "waits on the task" '^ecs wait tasks-stopped --region eu-west-1 --cluster vega-test --tasks arn:aws:ecs:eu-west-1:1:task/vega-test/abc$' calls
  [ "$(calls wait)" = 1 ] || { echo "FAIL success: expected one wait" >&2; failures=$((failures + 1)); }
fi

run "command override" 0 ok 0 test check && expect "check command" '"command":\["check"\]' calls

if run "placement failure" 1 placement 0 test; then
  expect "placement reason" 'not started: RESOURCE:MEMORY' out
  [ "$(calls wait)" = 0 ] || { echo "FAIL placement: waited on no task" >&2; failures=$((failures + 1)); }
fi

run "container exit code is the script's" 3 fails 0 test

run "missing exit code" 1 no-exit-code 0 test \
  && expect "stopped reason printed" 'without an exit code \(TaskFailedToStart\): ResourceInitializationError' out

if run "waiter timeouts are retried" 0 ok "255 255 0" test; then
  [ "$(calls wait)" = 3 ] || { echo "FAIL retry: expected three waits" >&2; failures=$((failures + 1)); }
fi

if run "wait is bounded" 1 ok 255 test; then
  expect "gives up after MAX_WAIT_ROUNDS" 'had not stopped after 3 wait rounds' out
  [ "$(calls describe-tasks)" = 0 ] || { echo "FAIL bounded: described a running task" >&2; failures=$((failures + 1)); }
fi

run "waiter error" 1 ok 254 test && expect "waiter exit named" 'aws ecs wait failed \(exit 254\)' out

run "unknown environment" 2 ok 0 prod && expect "names the file" 'prod.env does not exist' out
run "no arguments" 2 ok 0
if run "unsafe argument" 2 ok 0 test 'up;rm'; then
  [ ! -s "$work/calls" ] || { echo "FAIL unsafe argument: aws was called" >&2; failures=$((failures + 1)); }
fi

[ "$failures" -eq 0 ] || { echo "$failures run-migrations test(s) failed" >&2; exit 1; }
echo "run-migrations.sh: all scenarios pass" >&2
