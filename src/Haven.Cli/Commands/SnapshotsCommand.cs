using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Repository;
using Haven.Repository.Model;

namespace Haven.Cli.Commands;

/// <summary>Options that select snapshots, shared by several commands.</summary>
public sealed class SnapshotFilterOptions
{
    public readonly Option<string[]> Host = new("--host") { Description = "Only snapshots of this host (repeatable)" };
    public readonly Option<string[]> Tag = new("--tag") { Description = "Only snapshots with this tag (repeatable)" };
    public readonly Option<string[]> Path = new("--path") { Description = "Only snapshots that include this path (repeatable)" };

    public void AddTo(Command c)
    {
        c.Options.Add(Host);
        c.Options.Add(Tag);
        c.Options.Add(Path);
    }

    public SnapshotFilter Get(ParseResult p) => new(
        p.GetValue(Host) is { Length: > 0 } h ? h : null,
        p.GetValue(Path) is { Length: > 0 } ps ? ps.Select(x => System.IO.Path.GetFullPath(x).TrimEnd('/')).ToArray() : null,
        p.GetValue(Tag) is { Length: > 0 } t ? t.SelectMany(x => x.Split(',')).ToArray() : null);
}

public static class SnapshotsCommand
{
    public static Command Build()
    {
        var filter = new SnapshotFilterOptions();
        var latest = new Option<int?>("--latest") { Description = "Show only the newest N snapshots" };
        var command = new Command("snapshots", "List snapshots") { latest };
        filter.AddTo(command);
        command.Description += """


            Examples:
              haven snapshots
              haven snapshots --host laptop --tag nightly --json
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            var f = filter.Get(ctx.Parse);
            var list = (await repo.LoadSnapshotsAsync(ct, (id, e) => Output.Warn($"snapshots/{id}: {e.Message}"))).Where(s => f.Matches(s.Snapshot)).ToList();
            if (ctx.Parse.GetValue(latest) is int n)
            {
                if (n < 1)
                {
                    throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Usage, "--latest needs a count of 1 or more");
                }

                list = list.TakeLast(n).ToList();
            }

            if (ctx.Output.IsJson)
            {
                var array = new JsonArray();
                foreach (var (id, s) in list)
                {
                    var node = JsonSerializer.SerializeToNode(s, RepositoryJson.Default.Snapshot)!.AsObject();
                    node["id"] = id.ToString();
                    node["short_id"] = id.Short;
                    array.Add(node);
                }

                Console.Out.WriteLine(array.ToJsonString());
                return 0;
            }

            ctx.Output.Line($"{"ID",-9} {"Time",-19} {"Host",-16} {"Tags",-16} {"Size",10}  Paths");
            ctx.Output.Line(new string('-', 90));
            foreach (var (id, s) in list)
            {
                string size = s.Summary is { } sum ? Units.Bytes(sum.TotalBytesProcessed) : "";
                ctx.Output.Line($"{id.Short,-9} {s.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss} {Trim(s.Hostname, 16),-16} {Trim(string.Join(",", s.Tags), 16),-16} {size,10}  {string.Join(" ", s.Paths)}");
            }

            ctx.Output.Line(new string('-', 90));
            ctx.Output.Line($"{list.Count} snapshot(s)");
            return 0;
        });
        return command;
    }

    private static string Trim(string s, int n) => s.Length <= n ? s : s[..(n - 1)] + "…";
}
