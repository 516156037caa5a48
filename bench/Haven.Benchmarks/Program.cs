using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using Haven.Benchmarks;

// The default job is short: the machines are 2-core and shared, and a run of every benchmark should stay well under
// 10 minutes (about 3 with this job). It is added only when the command line names no job, because BenchmarkDotNet
// ignores `--job` when the config carries a job marked AsDefault; as AsDefault it still takes the command line's
// adjustments (`--iterationCount 15`, `--launchCount 3`, ...).
bool jobOnCommandLine = args.Any(a => a is "--job" or "-j" || a.StartsWith("--job=", StringComparison.Ordinal));
IConfig config = DefaultConfig.Instance.AddColumn(ThroughputColumn.Instance);
if (!jobOnCommandLine)
{
    config = config.AddJob(Job.Default.WithWarmupCount(2).WithIterationCount(5).WithId("Haven").AsDefault());
}

BenchmarkSwitcher.FromAssembly(typeof(BenchData).Assembly).Run(args, config);
