using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Haven.Core;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Xunit;

namespace Haven.Repository.Tests;

public class RetentionPolicyTests
{
    private static (ObjectId Id, Snapshot Snapshot) Snap(string time, string host = "laptop", string[]? paths = null, string[]? tags = null)
    {
        var snapshot = new Snapshot
        {
            Tree = new string('0', 64),
            Time = DateTimeOffset.Parse(time, CultureInfo.InvariantCulture),
            Hostname = host,
            Paths = paths ?? ["/home"],
            Tags = tags ?? [],
        };
        var id = new ObjectId(SHA256.HashData(Encoding.UTF8.GetBytes($"{time}|{host}|{string.Join(",", snapshot.Paths)}|{string.Join(",", snapshot.Tags)}")));
        return (id, snapshot);
    }

    private static RetentionGroup Single(IReadOnlyList<(ObjectId, Snapshot)> snapshots, RetentionPolicy policy) =>
        Assert.Single(RetentionPolicy.Apply(snapshots, policy));

    private static string[] Times(IEnumerable<KeptSnapshot> kept) => kept.Select(k => k.Snapshot.Time.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)).ToArray();

    private static string[] Times(IEnumerable<(ObjectId Id, Snapshot Snapshot)> removed) => removed.Select(k => k.Snapshot.Time.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)).ToArray();

    private static string[] ReasonsOf(RetentionGroup g, string time) =>
        g.Keep.Single(k => k.Snapshot.Time == DateTimeOffset.Parse(time, CultureInfo.InvariantCulture)).Reasons.ToArray();

    /// <summary>Three snapshots a day (06:00, 12:00, 18:00 UTC) from 2024-03-01 to 2024-03-10.</summary>
    private static List<(ObjectId, Snapshot)> TenDays() =>
        Enumerable.Range(1, 10).SelectMany(d => new[] { 6, 12, 18 }.Select(h => Snap($"2024-03-{d:D2}T{h:D2}:00:00Z"))).ToList();

    [Fact]
    public void EmptyPolicy_KeepsEverySnapshot()
    {
        var policy = new RetentionPolicy();
        Assert.True(policy.IsEmpty);
        var g = Single(TenDays(), policy);
        Assert.Equal(30, g.Keep.Count);
        Assert.Empty(g.Remove);
        Assert.All(g.Keep, k => Assert.Equal(["no policy"], k.Reasons));
        Assert.Equal("no policy", policy.Describe());
    }

    [Fact]
    public void KeepLast_KeepsTheNewestN_AndListsBothSidesOldestFirst()
    {
        var g = Single(TenDays(), new RetentionPolicy { Last = 4 });
        Assert.Equal(["2024-03-09 18:00", "2024-03-10 06:00", "2024-03-10 12:00", "2024-03-10 18:00"], Times(g.Keep));
        Assert.All(g.Keep, k => Assert.Equal(["last snapshot"], k.Reasons));
        Assert.Equal(26, g.Remove.Count);
        Assert.Equal("2024-03-01 06:00", Times(g.Remove)[0]);
        Assert.Equal("2024-03-09 12:00", Times(g.Remove)[^1]);
    }

    [Fact]
    public void KeepLast_WithMoreThanThereAre_KeepsAll()
    {
        var g = Single(TenDays(), new RetentionPolicy { Last = 100 });
        Assert.Equal(30, g.Keep.Count);
        Assert.Empty(g.Remove);
    }

    [Fact]
    public void KeepDaily_KeepsTheNewestSnapshotOfEachOfTheLastNDays()
    {
        var g = Single(TenDays(), new RetentionPolicy { Daily = 3 });
        Assert.Equal(["2024-03-08 18:00", "2024-03-09 18:00", "2024-03-10 18:00"], Times(g.Keep));
        Assert.All(g.Keep, k => Assert.Equal(["daily snapshot"], k.Reasons));
        Assert.Equal(27, g.Remove.Count);
    }

    [Fact]
    public void KeepDaily_WithFewerDaysThanAsked_AlsoKeepsTheOldestSnapshot()
    {
        var snapshots = new[] { Snap("2024-03-01T06:00:00Z"), Snap("2024-03-01T18:00:00Z"), Snap("2024-03-02T06:00:00Z"), Snap("2024-03-02T18:00:00Z") };
        var g = Single(snapshots, new RetentionPolicy { Daily = 7 });
        Assert.Equal(["2024-03-01 06:00", "2024-03-01 18:00", "2024-03-02 18:00"], Times(g.Keep));
        Assert.Equal(["oldest daily snapshot"], ReasonsOf(g, "2024-03-01T06:00:00Z"));
        Assert.Equal(["daily snapshot"], ReasonsOf(g, "2024-03-01T18:00:00Z"));
        Assert.Equal(["2024-03-02 06:00"], Times(g.Remove));
    }

    [Fact]
    public void KeepDaily_WithExactlyEnoughDays_DoesNotKeepTheOldestExtra()
    {
        var snapshots = new[] { Snap("2024-03-01T06:00:00Z"), Snap("2024-03-01T18:00:00Z"), Snap("2024-03-02T18:00:00Z") };
        var g = Single(snapshots, new RetentionPolicy { Daily = 2 });
        Assert.Equal(["2024-03-01 18:00", "2024-03-02 18:00"], Times(g.Keep));
        Assert.Equal(["2024-03-01 06:00"], Times(g.Remove));
    }

    [Fact]
    public void KeepHourly_KeepsTheNewestOfEachHour()
    {
        var snapshots = new[]
        {
            Snap("2024-03-01T10:05:00Z"), Snap("2024-03-01T10:55:00Z"), Snap("2024-03-01T11:00:00Z"),
            Snap("2024-03-01T11:59:59Z"), Snap("2024-03-01T13:30:00Z"),
        };
        var g = Single(snapshots, new RetentionPolicy { Hourly = 2 });
        Assert.Equal(["2024-03-01 11:59", "2024-03-01 13:30"], Times(g.Keep));
    }

    [Fact]
    public void KeepWeekly_UsesIsoWeeks_WhichStartOnMonday_AndCrossYearEnds()
    {
        // 2020-12-31 (Thursday) and 2021-01-03 (Sunday) are both in ISO week 53 of 2020; 2021-01-04 (Monday) starts week 1.
        var snapshots = new[] { Snap("2020-12-31T12:00:00Z"), Snap("2021-01-03T12:00:00Z"), Snap("2021-01-04T12:00:00Z") };
        var g = Single(snapshots, new RetentionPolicy { Weekly = 2 });
        Assert.Equal(["2021-01-03 12:00", "2021-01-04 12:00"], Times(g.Keep));
        Assert.Equal(["2020-12-31 12:00"], Times(g.Remove));
        Assert.All(g.Keep, k => Assert.Equal(["weekly snapshot"], k.Reasons));
    }

    [Fact]
    public void KeepMonthlyAndYearly_KeepTheNewestOfEachPeriod()
    {
        var snapshots = new[]
        {
            Snap("2021-06-15T00:00:00Z"), Snap("2021-12-31T23:00:00Z"), Snap("2022-01-01T01:00:00Z"),
            Snap("2022-01-20T00:00:00Z"), Snap("2022-02-10T00:00:00Z"), Snap("2022-02-11T00:00:00Z"),
        };
        var monthly = Single(snapshots, new RetentionPolicy { Monthly = 2 });
        Assert.Equal(["2022-01-20 00:00", "2022-02-11 00:00"], Times(monthly.Keep));

        var yearly = Single(snapshots, new RetentionPolicy { Yearly = 2 });
        Assert.Equal(["2021-12-31 23:00", "2022-02-11 00:00"], Times(yearly.Keep));
        Assert.All(yearly.Keep, k => Assert.Equal(["yearly snapshot"], k.Reasons));
    }

    [Fact]
    public void UnlimitedCount_KeepsOnePerPeriodForEveryPeriod()
    {
        var g = Single(TenDays(), new RetentionPolicy { Daily = RetentionPolicy.Unlimited });
        Assert.Equal(10, g.Keep.Count);
        Assert.All(g.Keep, k => Assert.Equal(18, k.Snapshot.Time.Hour));
        Assert.Equal("daily unlimited", new RetentionPolicy { Daily = RetentionPolicy.Unlimited }.Describe());
    }

    [Fact]
    public void Rules_Combine_AndEveryKeptSnapshotNamesAllItsReasons()
    {
        var g = Single(TenDays(), new RetentionPolicy { Last = 2, Daily = 3, Weekly = 2 });
        // 2024-03-10 is a Sunday: the week of 03-04 … 03-10 and the week of 02-26 … 03-03.
        Assert.Equal(["last snapshot", "daily snapshot", "weekly snapshot"], ReasonsOf(g, "2024-03-10T18:00:00Z"));
        Assert.Equal(["last snapshot"], ReasonsOf(g, "2024-03-10T12:00:00Z"));
        Assert.Equal(["daily snapshot"], ReasonsOf(g, "2024-03-09T18:00:00Z"));
        Assert.Equal(["daily snapshot"], ReasonsOf(g, "2024-03-08T18:00:00Z"));
        Assert.Equal(["weekly snapshot"], ReasonsOf(g, "2024-03-03T18:00:00Z"));
        Assert.Equal(5, g.Keep.Count);
        Assert.Equal(25, g.Remove.Count);
    }

    [Fact]
    public void KeepWithin_CountsBackFromTheNewestSnapshot_NotFromNow()
    {
        // Years in the past: relative to "now" nothing would be within two days.
        var g = Single(TenDays(), new RetentionPolicy { Within = TimeSpan.FromDays(2) });
        Assert.Equal(7, g.Keep.Count); // 03-08 18:00 (exactly two days before the newest) through 03-10 18:00
        Assert.Equal("2024-03-08 18:00", Times(g.Keep)[0]);
        Assert.All(g.Keep, k => Assert.Equal(["within 2d"], k.Reasons));
    }

    [Fact]
    public void KeepWithinDaily_KeepsOnePerDay_OnlyInsideTheDuration()
    {
        var g = Single(TenDays(), new RetentionPolicy { WithinDaily = TimeSpan.FromDays(3) });
        Assert.Equal(["2024-03-07 18:00", "2024-03-08 18:00", "2024-03-09 18:00", "2024-03-10 18:00"], Times(g.Keep));
        Assert.All(g.Keep, k => Assert.Equal(["daily within 3d"], k.Reasons));
    }

    [Fact]
    public void KeepWithinHourlyAndWeekly_UseTheirPeriods()
    {
        var hourly = Single(TenDays(), new RetentionPolicy { WithinHourly = TimeSpan.FromHours(12) });
        Assert.Equal(["2024-03-10 06:00", "2024-03-10 12:00", "2024-03-10 18:00"], Times(hourly.Keep));
        Assert.Equal(["hourly within 12h"], hourly.Keep[0].Reasons);

        var weekly = Single(TenDays(), new RetentionPolicy { WithinWeekly = TimeSpan.FromDays(30) });
        Assert.Equal(["2024-03-03 18:00", "2024-03-10 18:00"], Times(weekly.Keep));
    }

    [Fact]
    public void KeepTag_KeepsEverySnapshotWithAnyOfTheTags()
    {
        var snapshots = new[]
        {
            Snap("2024-03-01T00:00:00Z", tags: ["nightly"]), Snap("2024-03-02T00:00:00Z", tags: ["manual"]),
            Snap("2024-03-03T00:00:00Z", tags: ["nightly", "important"]), Snap("2024-03-04T00:00:00Z"),
        };
        var g = Single(snapshots, new RetentionPolicy { Tags = ["important", "nightly"], Last = 1 });
        Assert.Equal(["2024-03-01 00:00", "2024-03-03 00:00", "2024-03-04 00:00"], Times(g.Keep));
        Assert.Equal(["tag important", "tag nightly"], ReasonsOf(g, "2024-03-03T00:00:00Z"));
        Assert.Equal(["last snapshot"], ReasonsOf(g, "2024-03-04T00:00:00Z"));
        Assert.Equal(["2024-03-02 00:00"], Times(g.Remove));
    }

    [Fact]
    public void APolicyThatWouldRemoveAWholeGroup_IsRefused()
    {
        var e = Assert.Throws<HavenException>(() => RetentionPolicy.Apply(TenDays(), new RetentionPolicy { Tags = ["nightyl"] }));
        Assert.Equal(ErrorCode.Usage, e.Code);
        Assert.Contains("refusing", e.Message);
        Assert.Contains("tag nightyl", e.Message);
    }

    [Fact]
    public void Groups_ByHostAndPathsByDefault_EachKeepsItsOwnHistory()
    {
        var snapshots = new[]
        {
            Snap("2024-03-01T00:00:00Z", "laptop", ["/home"]), Snap("2024-03-02T00:00:00Z", "laptop", ["/home"]),
            Snap("2024-03-01T00:00:00Z", "server", ["/home"]), Snap("2024-03-03T00:00:00Z", "server", ["/home"]),
            Snap("2024-03-04T00:00:00Z", "laptop", ["/etc", "/home"]), Snap("2024-03-05T00:00:00Z", "laptop", ["/home", "/etc"]),
        };
        var groups = RetentionPolicy.Apply(snapshots, new RetentionPolicy { Last = 1 });
        Assert.Equal(3, groups.Count);
        var both = groups.Single(g => g.Key.Paths!.Count == 2);
        Assert.Equal("host laptop, paths /etc /home", both.Key.Describe());
        Assert.Equal(["2024-03-05 00:00"], Times(both.Keep)); // path order does not matter
        Assert.Equal(["2024-03-04 00:00"], Times(both.Remove));
        Assert.Equal(["2024-03-03 00:00"], Times(groups.Single(g => g.Key.Host == "server").Keep));
        Assert.Null(both.Key.Tags);

        var byHost = RetentionPolicy.Apply(snapshots, new RetentionPolicy { Last = 1 }, SnapshotGrouping.Host);
        Assert.Equal(2, byHost.Count);
        Assert.Null(byHost[0].Key.Paths);
        Assert.Equal(["2024-03-05 00:00"], Times(byHost.Single(g => g.Key.Host == "laptop").Keep));

        var one = Assert.Single(RetentionPolicy.Apply(snapshots, new RetentionPolicy { Last = 2 }, SnapshotGrouping.None));
        Assert.Equal("all snapshots", one.Key.Describe());
        Assert.Equal(["2024-03-04 00:00", "2024-03-05 00:00"], Times(one.Keep));
        Assert.Equal(4, one.Remove.Count);
    }

    [Fact]
    public void GroupByTags_PutsSnapshotsWithTheSameTagSetTogether_InAnyOrder()
    {
        var snapshots = new[]
        {
            Snap("2024-03-01T00:00:00Z", tags: ["a", "b"]), Snap("2024-03-02T00:00:00Z", tags: ["b", "a"]),
            Snap("2024-03-03T00:00:00Z", tags: ["a"]), Snap("2024-03-04T00:00:00Z"),
        };
        var groups = RetentionPolicy.Apply(snapshots, new RetentionPolicy { Last = 1 }, SnapshotGrouping.Tags);
        Assert.Equal(3, groups.Count);
        var ab = groups.Single(g => g.Key.Tags!.Count == 2);
        Assert.Equal(["a", "b"], ab.Key.Tags);
        Assert.Equal(["2024-03-02 00:00"], Times(ab.Keep));
        Assert.Equal("tags (none)", groups.Single(g => g.Key.Tags!.Count == 0).Key.Describe());
    }

    [Fact]
    public void Periods_AreCalendarPeriodsOfTheGivenTimeZone()
    {
        // A 09 12:00 UTC; B 10 21:30 UTC; C 10 22:30 UTC. In UTC, B and C share a day; at UTC+2, C is on the 11th.
        var snapshots = new[] { Snap("2024-03-09T12:00:00Z"), Snap("2024-03-10T21:30:00Z"), Snap("2024-03-10T22:30:00Z") };
        var utc = Single(snapshots, new RetentionPolicy { Daily = 2 });
        Assert.Equal(["2024-03-09 12:00", "2024-03-10 22:30"], Times(utc.Keep));

        var plus2 = TimeZoneInfo.CreateCustomTimeZone("test+2", TimeSpan.FromHours(2), "test+2", "test+2");
        var local = Single(snapshots, new RetentionPolicy { Daily = 2, TimeZone = plus2 });
        Assert.Equal(["2024-03-10 21:30", "2024-03-10 22:30"], Times(local.Keep));
        Assert.Equal(["2024-03-09 12:00"], Times(local.Remove));
    }

    [Fact]
    public void SnapshotsAtTheSameTime_AreOrderedById_SoTheResultIsStable()
    {
        var a = Snap("2024-03-01T00:00:00Z", tags: ["x"]);
        var b = Snap("2024-03-01T00:00:00Z", tags: ["y"]);
        var first = Single([a, b], new RetentionPolicy { Last = 1 });
        var second = Single([b, a], new RetentionPolicy { Last = 1 });
        Assert.Equal(first.Keep.Single().Id, second.Keep.Single().Id);
        Assert.Equal(new[] { a.Id, b.Id }.Max(), first.Keep.Single().Id);
    }

    [Fact]
    public void InvalidPolicies_AreUsageErrors()
    {
        Assert.Equal(ErrorCode.Usage, Assert.Throws<HavenException>(() => new RetentionPolicy { Daily = -2 }.Validate()).Code);
        Assert.Equal(ErrorCode.Usage, Assert.Throws<HavenException>(() => new RetentionPolicy { Within = TimeSpan.Zero }.Validate()).Code);
        Assert.Equal(ErrorCode.Usage, Assert.Throws<HavenException>(() => new RetentionPolicy { Tags = [""] }.Validate()).Code);
        Assert.Equal(ErrorCode.Usage, Assert.Throws<HavenException>(() => RetentionPolicy.Apply(TenDays(), new RetentionPolicy { Last = -5 })).Code);
    }

    [Fact]
    public void Describe_NamesEveryRule()
    {
        var policy = new RetentionPolicy { Last = 3, Weekly = 4, Within = TimeSpan.FromHours(36), WithinMonthly = TimeSpan.FromDays(365), Tags = ["keep"] };
        Assert.Equal("last 3, weekly 4, within 1d12h, within-monthly 365d, tag keep", policy.Describe());
        Assert.Equal("1h30m", RetentionPolicy.FormatSpan(TimeSpan.FromMinutes(90)));
    }

    [Fact]
    public void AnyPolicy_SplitsEachGroupIntoKeepAndRemove_AndAlwaysKeepsTheNewest()
    {
        var random = new Random(7);
        for (int round = 0; round < 200; round++)
        {
            var snapshots = Enumerable.Range(0, random.Next(1, 40))
                .Select(_ => Snap(new DateTimeOffset(2020, 1, 1, 0, 0, 0, TimeSpan.Zero).AddMinutes(random.Next(0, 2 * 365 * 24 * 60)).ToString("O", CultureInfo.InvariantCulture),
                    random.Next(2) == 0 ? "a" : "b", tags: random.Next(4) == 0 ? ["t"] : []))
                .DistinctBy(s => s.Id).ToList();
            var policy = new RetentionPolicy
            {
                Last = random.Next(0, 3),
                Hourly = random.Next(0, 3),
                Daily = random.Next(-1, 4),
                Weekly = random.Next(0, 3),
                Monthly = random.Next(0, 3),
                Yearly = random.Next(0, 2),
                Within = random.Next(3) == 0 ? TimeSpan.FromDays(random.Next(1, 100)) : null,
                WithinDaily = random.Next(3) == 0 ? TimeSpan.FromDays(random.Next(1, 100)) : null,
            };
            if (policy.IsEmpty)
            {
                continue;
            }

            var groups = RetentionPolicy.Apply(snapshots, policy);
            var all = groups.SelectMany(g => g.Keep.Select(k => k.Id).Concat(g.Remove.Select(r => r.Id))).ToList();
            Assert.Equal(snapshots.Count, all.Count);
            Assert.Equal(snapshots.Select(s => s.Id).Order(), all.Order());
            foreach (var g in groups)
            {
                var newest = g.Keep.Select(k => (k.Snapshot.Time, k.Id)).Concat(g.Remove.Select(r => (r.Snapshot.Time, r.Id))).Max();
                Assert.Contains(g.Keep, k => k.Id == newest.Id);
                Assert.All(g.Keep, k => Assert.NotEmpty(k.Reasons));
            }
        }
    }
}
