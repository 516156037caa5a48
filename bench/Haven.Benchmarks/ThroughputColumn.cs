using System.Globalization;
using System.Reflection;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Haven.Benchmarks;

/// <summary>Declares how many bytes of user data one invocation of a benchmark method processes.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class ProcessesBytesAttribute(long bytes) : Attribute
{
    public long Bytes { get; } = bytes;
}

/// <summary>
/// "MB/s": bytes of <see cref="ProcessesBytesAttribute"/> divided by the mean time, in decimal megabytes per second
/// like the whole-program harness (bench/run-comparison.sh). Empty for methods without the attribute.
/// </summary>
public sealed class ThroughputColumn : IColumn
{
    public static readonly ThroughputColumn Instance = new();

    public string Id => nameof(ThroughputColumn);

    public string ColumnName => "MB/s";

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public string Legend => "Bytes of user data per second (10^6 B/s), from the mean; one core";

    public bool IsAvailable(Summary summary) => true;

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var bytes = benchmarkCase.Descriptor.WorkloadMethod.GetCustomAttribute<ProcessesBytesAttribute>()?.Bytes;
        double? meanNs = summary[benchmarkCase]?.ResultStatistics?.Mean;
        if (bytes is null || meanNs is not > 0)
        {
            return "-";
        }

        double mbPerSecond = bytes.Value / meanNs.Value * 1e9 / 1e6;
        return mbPerSecond.ToString("N0", CultureInfo.InvariantCulture);
    }

    public override string ToString() => ColumnName;
}
