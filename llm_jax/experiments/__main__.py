"""python -m llm_jax.experiments run|report STUDY_FOLDER [flags]: see llm_jax/experiments/runner.py.

  run     trains every variant x seed of the study that has no record yet (this shard's share),
          then writes the report of what ROOT holds
  report  merges the records under one or more roots into results.csv, results.md and the plots
  list    prints each run's command and state without running anything

Exit codes: 0 done (failed runs are in the report, not the exit code); 2 a bad study or flag,
before any run starts; 75 / 130 a run was stopped by SIGTERM / Ctrl-C after saving (run the
same command again to resume).
"""

import argparse
import os
import sys

from llm_jax import errors


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m llm_jax.experiments', description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='command', required=True)
  for name in ('run', 'report', 'list'):
    s = sub.add_parser(name)
    s.add_argument('study', help='the study folder, e.g. experiments/glu_variants')
    s.add_argument('--scale', default='cpu', help='cpu (the CPU-sized study) or accelerator (the paper-sized one)')
    s.add_argument('--workdir', default='', help='root of the runs (default runs/studies/NAME/SCALE); report: '
                   'several roots separated by commas are merged')
    s.add_argument('--out', default='', help='where results.csv, results.md and the plots go '
                   '(default STUDY/results/SCALE)')
    if name in ('run', 'list'):
      s.add_argument('--shard', default='1/1', help='I/N: run every N-th run from the I-th (1-based)')
    if name == 'run':
      s.add_argument('--retry_failed', action='store_true', help='run failed runs again')
      s.add_argument('--verbose', action='store_true', help="show each run's own output (else in its study.log)")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from llm_jax.experiments import report, runner
  from llm_jax.experiments import study as study_lib
  if not os.path.isdir(args.study):
    raise study_lib.StudyError(f'{args.study} is not a folder; give a study folder such as experiments/glu_variants.')
  study = study_lib.load(args.study, args.scale)
  roots = [r for r in args.workdir.split(',') if r] or [runner.default_root(study, args.scale)]
  out = args.out or os.path.join(study.folder, 'results', args.scale)
  if args.command == 'list':
    for run in runner.shard_runs(study.runs(), runner.parse_shard(args.shard)):
      record = runner.read_record(roots[0], run)
      state = 'not run' if record is None else record['status']
      print(f'{run.id}: {state}\n  {" ".join(runner.command(study, run, roots[0]))}')
    return 0
  if args.command == 'run':
    if len(roots) != 1:
      raise study_lib.StudyError('run takes one --workdir root; several roots are for report.')
    code = runner.run_study(study, args.scale, roots[0], shard=runner.parse_shard(args.shard),
                            retry_failed=args.retry_failed, echo=args.verbose)
    if code:
      return code
  report.report(study, args.scale, roots, out)
  print(f'[study] results: {os.path.join(out, "results.md")} (+ results.csv, curves.csv, curves.png, final.png)', flush=True)
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except (errors.Error, KeyboardInterrupt) as e:
    sys.exit(errors.report(e))
