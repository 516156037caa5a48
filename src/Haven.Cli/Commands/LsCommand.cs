using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;

namespace Haven.Cli.Commands;

public static class LsCommand
{
    public static Command Build()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Snapshot id (or a unique prefix) or 'latest'" };
        var dirs = new Argument<string[]>("path") { Description = "Only list below these paths", Arity = ArgumentArity.ZeroOrMore };
        var longFormat = new Option<bool>("--long", "-l") { Description = "Show mode, owner, size and time" };
        var recursive = new Option<bool>("--recursive") { Description = "With a path: list everything below it, not just its entries" };
        var filter = new SnapshotFilterOptions();
        Runner.RejectOptionLikeValues(snapshot);
        Runner.RejectOptionLikeValues(dirs);
        var command = new Command("ls", "List files in a snapshot") { snapshot, dirs, longFormat, recursive };
        filter.AddTo(command);
        command.Description += """


            Examples:
              haven ls latest
              haven ls -l 1a2b3c4d /home/user/Documents
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var (id, snap) = await repo.FindSnapshotAsync(ctx.Parse.GetValue(snapshot)!, filter.Get(ctx.Parse), ct);
            var prefixes = (ctx.Parse.GetValue(dirs) ?? []).Select(d => "/" + d.Trim('/')).ToList();
            bool recurse = prefixes.Count == 0 || ctx.Parse.GetValue(recursive);
            bool isLong = ctx.Parse.GetValue(longFormat);
            if (!ctx.Output.IsJson)
            {
                ctx.Output.Info($"snapshot {id.Short} of {string.Join(" ", snap.Paths)} at {snap.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss}");
            }

            async Task Walk(ObjectId tree, string prefix)
            {
                foreach (var node in await repo.LoadTreeAsync(tree, ct))
                {
                    string path = prefix + "/" + node.DisplayName;
                    bool under = prefixes.Count == 0 || prefixes.Any(p => path == p || path.StartsWith(p + "/", StringComparison.Ordinal));
                    bool above = prefixes.Any(p => p.StartsWith(path + "/", StringComparison.Ordinal));
                    bool directChild = prefixes.Any(p => path.StartsWith(p + "/", StringComparison.Ordinal) && !path[(p.Length + 1)..].Contains('/'));
                    if (under && (recurse || directChild || prefixes.Contains(path)))
                    {
                        Print(ctx, node, path, isLong);
                    }

                    if (node.Subtree is { } sub && (above || (under && (recurse || prefixes.Contains(path)))))
                    {
                        await Walk(sub, path);
                    }
                }
            }

            await Walk(snap.TreeId, "");
            return 0;
        });
        return command;
    }

    private static void Print(CliContext ctx, Node node, string path, bool isLong)
    {
        if (ctx.Output.IsJson)
        {
            Console.Out.WriteLine(new JsonObject
            {
                ["path"] = path,
                ["type"] = node.Type.ToString().ToLowerInvariant(),
                ["mode"] = node.Mode,
                ["uid"] = node.Uid,
                ["gid"] = node.Gid,
                ["user"] = node.User,
                ["group"] = node.Group,
                ["size"] = node.Size,
                ["mtime"] = FormatTime(node.ModifyTimeNs),
                ["link_target"] = node.LinkTarget is { } t ? PosixPath.ToDisplay(t) : null,
            }.ToJsonString());
            return;
        }

        if (!isLong)
        {
            Console.Out.WriteLine(path);
            return;
        }

        string suffix = node.LinkTarget is { } target ? " -> " + PosixPath.ToDisplay(target) : "";
        Console.Out.WriteLine($"{ModeString(node)} {node.User ?? node.Uid.ToString(),-8} {node.Group ?? node.Gid.ToString(),-8} {node.Size,12} {FormatTime(node.ModifyTimeNs)} {path}{suffix}");
    }

    public static string FormatTime(long ns) => DateTimeOffset.FromUnixTimeMilliseconds(ns / 1_000_000).ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss");

    public static string ModeString(Node node)
    {
        char type = node.Type switch
        {
            FileType.Directory => 'd',
            FileType.Symlink => 'l',
            FileType.CharDevice => 'c',
            FileType.BlockDevice => 'b',
            FileType.Fifo => 'p',
            FileType.Socket => 's',
            _ => '-',
        };
        var m = node.Mode;
        char Bit(uint mask, char c) => (m & mask) != 0 ? c : '-';
        char Exec(uint x, uint special, char set, char setNoExec) => (m & special) != 0 ? ((m & x) != 0 ? set : setNoExec) : Bit(x, 'x');
        return $"{type}{Bit(0x100, 'r')}{Bit(0x80, 'w')}{Exec(0x40, 0x800, 's', 'S')}{Bit(0x20, 'r')}{Bit(0x10, 'w')}{Exec(0x8, 0x400, 's', 'S')}{Bit(0x4, 'r')}{Bit(0x2, 'w')}{Exec(0x1, 0x200, 't', 'T')}";
    }
}
