using System.Globalization;
using Haven.Core;
using Haven.Repository.Model;

namespace Haven.Repository.Maintenance;

/// <summary>Which snapshot fields put snapshots into the same group for <see cref="RetentionPolicy"/>. Any combination.</summary>
[Flags]
public enum SnapshotGrouping
{
    /// <summary>All snapshots form one group.</summary>
    None = 0,
    Host = 1,
    Paths = 2,
    Tags = 4,

    /// <summary>restic's default: one history per machine and set of backed-up paths.</summary>
    Default = Host | Paths,
}

/// <summary>
/// What the snapshots of one group share. A field is null when the grouping does not use it. Paths and tags are
/// sorted, so <c>--tag a,b</c> and <c>--tag b,a</c> land in the same group.
/// </summary>
public sealed class SnapshotGroupKey : IEquatable<SnapshotGroupKey>
{
    private readonly string _canonical;

    public SnapshotGroupKey(string? host, IReadOnlyList<string>? paths, IReadOnlyList<string>? tags)
    {
        Host = host;
        Paths = paths?.Order(StringComparer.Ordinal).ToArray();
        Tags = tags?.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        // NUL cannot occur in host names, paths or tags typed on a command line, so it separates unambiguously.
        _canonical = string.Join('\0', Host ?? "\u0001", Paths is null ? "\u0001" : string.Join('\u0002', Paths), Tags is null ? "\u0001" : string.Join('\u0002', Tags));
    }

    public string? Host { get; }

    public IReadOnlyList<string>? Paths { get; }

    public IReadOnlyList<string>? Tags { get; }

    public static SnapshotGroupKey For(Snapshot snapshot, SnapshotGrouping grouping) => new(
        grouping.HasFlag(SnapshotGrouping.Host) ? snapshot.Hostname : null,
        grouping.HasFlag(SnapshotGrouping.Paths) ? snapshot.Paths : null,
        grouping.HasFlag(SnapshotGrouping.Tags) ? snapshot.Tags : null);

    /// <summary>"host laptop, paths /home/ann, tags (none)", or "all snapshots" without grouping.</summary>
    public string Describe()
    {
        var parts = new List<string>();
        if (Host is not null) parts.Add($"host {(Host.Length == 0 ? "(none)" : Host)}");
        if (Paths is not null) parts.Add($"paths {(Paths.Count == 0 ? "(none)" : string.Join(" ", Paths))}");
        if (Tags is not null) parts.Add($"tags {(Tags.Count == 0 ? "(none)" : string.Join(",", Tags))}");
        return parts.Count == 0 ? "all snapshots" : string.Join(", ", parts);
    }

    public bool Equals(SnapshotGroupKey? other) => other is not null && string.Equals(_canonical, other._canonical, StringComparison.Ordinal);

    public override bool Equals(object? obj) => Equals(obj as SnapshotGroupKey);

    public override int GetHashCode() => StringComparer.Ordinal.GetHashCode(_canonical);

    public override string ToString() => Describe();

    internal int CompareTo(SnapshotGroupKey other) => string.CompareOrdinal(_canonical, other._canonical);
}

/// <summary>A snapshot the policy keeps, with every rule that keeps it ("daily snapshot", "within 7d", "tag nightly").</summary>
public sealed record KeptSnapshot(ObjectId Id, Snapshot Snapshot, IReadOnlyList<string> Reasons);

/// <summary>The decision for one group. Both lists are oldest first, as <c>haven snapshots</c> prints them.</summary>
public sealed record RetentionGroup(SnapshotGroupKey Key, IReadOnlyList<KeptSnapshot> Keep, IReadOnlyList<(ObjectId Id, Snapshot Snapshot)> Remove);

/// <summary>
/// Which snapshots <c>forget</c> keeps (restic's policy, with restic's semantics so that users can carry their
/// habits over). Within each group, snapshots are visited newest first:
/// <list type="bullet">
/// <item><see cref="Last"/> keeps the N newest.</item>
/// <item><see cref="Hourly"/> … <see cref="Yearly"/> keep the newest snapshot of each of the N newest hours, days,
/// ISO-8601 weeks (Monday first; the week of 2021-01-03 is week 53 of 2020), months and years that have snapshots.
/// When a rule finds fewer such periods than it may keep, it also keeps the group's oldest snapshot ("oldest daily
/// snapshot"), so a young repository keeps its full history.</item>
/// <item><see cref="Within"/> keeps every snapshot not older than the duration before the group's newest snapshot
/// (not before "now": a machine that stopped backing up keeps its last history).</item>
/// <item><see cref="WithinHourly"/> … <see cref="WithinYearly"/> keep one snapshot per period, without a count limit,
/// among the snapshots within the duration.</item>
/// <item><see cref="Tags"/> keeps every snapshot that carries any of the tags.</item>
/// </list>
/// A count of <see cref="Unlimited"/> keeps every period. Periods are calendar periods in <see cref="TimeZone"/>.
/// A policy without any rule keeps everything. A policy with rules that would remove every snapshot of a group
/// (only possible with <see cref="Tags"/> alone) is refused: that is almost always a typo in a tag, and removing
/// everything takes explicit snapshot ids.
/// </summary>
public sealed record RetentionPolicy
{
    /// <summary>As a count: keep every period (restic's -1).</summary>
    public const int Unlimited = -1;

    public int Last { get; init; }

    public int Hourly { get; init; }

    public int Daily { get; init; }

    public int Weekly { get; init; }

    public int Monthly { get; init; }

    public int Yearly { get; init; }

    public TimeSpan? Within { get; init; }

    public TimeSpan? WithinHourly { get; init; }

    public TimeSpan? WithinDaily { get; init; }

    public TimeSpan? WithinWeekly { get; init; }

    public TimeSpan? WithinMonthly { get; init; }

    public TimeSpan? WithinYearly { get; init; }

    /// <summary>Snapshots with any of these tags are kept.</summary>
    public IReadOnlyList<string> Tags { get; init; } = [];

    /// <summary>
    /// The time zone whose calendar defines hours, days, weeks, months and years. UTC by default, so results do not
    /// depend on the machine; the CLI passes the local zone, as a user thinks of "daily" in local days.
    /// </summary>
    public TimeZoneInfo TimeZone { get; init; } = TimeZoneInfo.Utc;

    public bool IsEmpty =>
        Last == 0 && Hourly == 0 && Daily == 0 && Weekly == 0 && Monthly == 0 && Yearly == 0
        && Within is null && WithinHourly is null && WithinDaily is null && WithinWeekly is null && WithinMonthly is null && WithinYearly is null
        && Tags.Count == 0;

    /// <summary>Throws <see cref="ErrorCode.Usage"/> for counts below <see cref="Unlimited"/> and durations that are not positive.</summary>
    public void Validate()
    {
        foreach (var (name, count) in Counts())
        {
            if (count < Unlimited)
            {
                throw new HavenException(ErrorCode.Usage, $"--keep-{name} {count} is not a count (use a number >= 0, or unlimited)");
            }
        }

        foreach (var (name, span) in Spans())
        {
            if (span is { } s && s <= TimeSpan.Zero)
            {
                throw new HavenException(ErrorCode.Usage, $"--keep-{name} must be a positive duration");
            }
        }

        if (Tags.Any(string.IsNullOrEmpty))
        {
            throw new HavenException(ErrorCode.Usage, "--keep-tag needs a non-empty tag");
        }
    }

    /// <summary>"last 3, daily 7, weekly unlimited, within 30d, tag nightly", or "no policy".</summary>
    public string Describe()
    {
        var parts = new List<string>();
        foreach (var (name, count) in Counts())
        {
            if (count != 0)
            {
                parts.Add($"{name} {(count == Unlimited ? "unlimited" : count.ToString(CultureInfo.InvariantCulture))}");
            }
        }

        foreach (var (name, span) in Spans())
        {
            if (span is { } s)
            {
                parts.Add($"{name} {FormatSpan(s)}");
            }
        }

        parts.AddRange(Tags.Select(t => $"tag {t}"));
        return parts.Count == 0 ? "no policy" : string.Join(", ", parts);
    }

    private IEnumerable<(string, int)> Counts() =>
        [("last", Last), ("hourly", Hourly), ("daily", Daily), ("weekly", Weekly), ("monthly", Monthly), ("yearly", Yearly)];

    private IEnumerable<(string, TimeSpan?)> Spans() =>
        [("within", Within), ("within-hourly", WithinHourly), ("within-daily", WithinDaily), ("within-weekly", WithinWeekly), ("within-monthly", WithinMonthly), ("within-yearly", WithinYearly)];

    /// <summary>Splits snapshots into groups (ordered by their key), each oldest first.</summary>
    public static IReadOnlyList<(SnapshotGroupKey Key, List<(ObjectId Id, Snapshot Snapshot)> Snapshots)> Group(
        IReadOnlyList<(ObjectId Id, Snapshot Snapshot)> snapshots, SnapshotGrouping grouping)
    {
        ArgumentNullException.ThrowIfNull(snapshots);
        var groups = new Dictionary<SnapshotGroupKey, List<(ObjectId, Snapshot)>>();
        foreach (var s in snapshots)
        {
            var key = SnapshotGroupKey.For(s.Snapshot, grouping);
            if (!groups.TryGetValue(key, out var list))
            {
                groups[key] = list = [];
            }

            list.Add(s);
        }

        var result = groups.Select(g => (g.Key, g.Value.OrderBy(s => s.Item2.Time).ThenBy(s => s.Item1).ToList())).ToList();
        result.Sort((a, b) => a.Key.CompareTo(b.Key));
        return result;
    }

    /// <summary>
    /// Decides, per group, which snapshots to keep (with reasons) and which to remove. Pure: reads nothing, changes
    /// nothing, and the same input always gives the same output (ties in time are broken by id).
    /// Throws <see cref="ErrorCode.Usage"/> when a non-empty policy would remove every snapshot of a group.
    /// </summary>
    public static IReadOnlyList<RetentionGroup> Apply(IReadOnlyList<(ObjectId Id, Snapshot Snapshot)> snapshots, RetentionPolicy policy, SnapshotGrouping grouping = SnapshotGrouping.Default)
    {
        ArgumentNullException.ThrowIfNull(policy);
        policy.Validate();
        var result = new List<RetentionGroup>();
        foreach (var (key, members) in Group(snapshots, grouping))
        {
            var group = policy.ApplyToGroup(key, members);
            if (group.Keep.Count == 0 && !policy.IsEmpty)
            {
                throw new HavenException(ErrorCode.Usage,
                    $"the policy ({policy.Describe()}) keeps none of the {group.Remove.Count} snapshot(s) of {key.Describe()}; refusing to remove them all",
                    "check the tag names, add --keep-last 1, or name the snapshots to remove by id");
            }

            result.Add(group);
        }

        return result;
    }

    private sealed class Rule(string name, int count, TimeSpan? within, Func<DateTime, int, long> bucket)
    {
        public string Reason { get; } = name;

        /// <summary>How many more periods it may keep; <see cref="Unlimited"/> for all.</summary>
        public int Remaining { get; set; } = count;

        /// <summary>Only snapshots at most this long before the group's newest count (the keep-within-* rules).</summary>
        public TimeSpan? Within { get; } = within;

        public Func<DateTime, int, long> Bucket { get; } = bucket;

        public long? LastBucket { get; set; }

        /// <summary>Whether an unfulfilled count extends to the oldest snapshot (counted rules only).</summary>
        public bool KeepsOldest => Within is null && Remaining > 0;
    }

    private List<Rule> Rules()
    {
        var rules = new List<Rule>();
        void Add(string reason, int count, TimeSpan? within, Func<DateTime, int, long> bucket)
        {
            if (count != 0)
            {
                rules.Add(new Rule(reason, count, within, bucket));
            }
        }

        Add("last snapshot", Last, null, (_, index) => index);
        Add("hourly snapshot", Hourly, null, HourBucket);
        Add("daily snapshot", Daily, null, DayBucket);
        Add("weekly snapshot", Weekly, null, WeekBucket);
        Add("monthly snapshot", Monthly, null, MonthBucket);
        Add("yearly snapshot", Yearly, null, YearBucket);
        if (WithinHourly is { } h) Add($"hourly within {FormatSpan(h)}", Unlimited, h, HourBucket);
        if (WithinDaily is { } d) Add($"daily within {FormatSpan(d)}", Unlimited, d, DayBucket);
        if (WithinWeekly is { } w) Add($"weekly within {FormatSpan(w)}", Unlimited, w, WeekBucket);
        if (WithinMonthly is { } m) Add($"monthly within {FormatSpan(m)}", Unlimited, m, MonthBucket);
        if (WithinYearly is { } y) Add($"yearly within {FormatSpan(y)}", Unlimited, y, YearBucket);
        return rules;
    }

    private static long HourBucket(DateTime t, int _) => (((((long)t.Year * 100) + t.Month) * 100) + t.Day) * 100 + t.Hour;

    private static long DayBucket(DateTime t, int _) => (((long)t.Year * 100) + t.Month) * 100 + t.Day;

    private static long WeekBucket(DateTime t, int _) => ((long)ISOWeek.GetYear(t) * 100) + ISOWeek.GetWeekOfYear(t);

    private static long MonthBucket(DateTime t, int _) => ((long)t.Year * 100) + t.Month;

    private static long YearBucket(DateTime t, int _) => t.Year;

    private RetentionGroup ApplyToGroup(SnapshotGroupKey key, List<(ObjectId Id, Snapshot Snapshot)> oldestFirst)
    {
        if (IsEmpty)
        {
            return new RetentionGroup(key, oldestFirst.Select(s => new KeptSnapshot(s.Id, s.Snapshot, ["no policy"])).ToList(), []);
        }

        var newestFirst = Enumerable.Reverse(oldestFirst).ToList();
        var newest = newestFirst[0].Snapshot.Time;
        var rules = Rules();
        var keep = new List<KeptSnapshot>();
        var remove = new List<(ObjectId, Snapshot)>();
        for (int i = 0; i < newestFirst.Count; i++)
        {
            var (id, snapshot) = newestFirst[i];
            var local = TimeZoneInfo.ConvertTime(snapshot.Time, TimeZone).DateTime;
            bool oldest = i == newestFirst.Count - 1;
            var reasons = new List<string>();
            foreach (var rule in rules)
            {
                if (rule.Remaining == 0 || (rule.Within is { } w && snapshot.Time < newest - w))
                {
                    continue;
                }

                long bucket = rule.Bucket(local, i);
                if (bucket != rule.LastBucket)
                {
                    reasons.Add(rule.Reason);
                }
                else if (oldest && rule.KeepsOldest)
                {
                    reasons.Add("oldest " + rule.Reason);
                }
                else
                {
                    continue;
                }

                rule.LastBucket = bucket;
                if (rule.Remaining > 0)
                {
                    rule.Remaining--;
                }
            }

            if (Within is { } within && snapshot.Time >= newest - within)
            {
                reasons.Add($"within {FormatSpan(within)}");
            }

            reasons.AddRange(Tags.Where(t => snapshot.Tags.Contains(t, StringComparer.Ordinal)).Select(t => $"tag {t}"));
            if (reasons.Count > 0)
            {
                keep.Add(new KeptSnapshot(id, snapshot, reasons));
            }
            else
            {
                remove.Add((id, snapshot));
            }
        }

        keep.Reverse();
        remove.Reverse();
        return new RetentionGroup(key, keep, remove);
    }

    /// <summary>"7d", "1d12h", "1h30m", "1d30s": days, hours, minutes and seconds, leaving out zero parts.</summary>
    public static string FormatSpan(TimeSpan span)
    {
        if (span == TimeSpan.Zero)
        {
            return "0s";
        }

        var s = new System.Text.StringBuilder();
        if (span.Days > 0) s.Append(CultureInfo.InvariantCulture, $"{span.Days}d");
        if (span.Hours > 0) s.Append(CultureInfo.InvariantCulture, $"{span.Hours}h");
        if (span.Minutes > 0) s.Append(CultureInfo.InvariantCulture, $"{span.Minutes}m");
        if (span.Seconds > 0 || s.Length == 0) s.Append(CultureInfo.InvariantCulture, $"{span.Seconds}s");
        return s.ToString();
    }
}
