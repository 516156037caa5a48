using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Files.Filters;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;

namespace Haven.Cli.Commands;

public static class FindCommand
{
    public static Command Build()
    {
        var patterns = new Argument<string[]>("pattern") { Description = "Name glob (e.g. '*.jpg'), or a path pattern with '/' (e.g. '/home/*/Documents/**/*.odt')", Arity = ArgumentArity.OneOrMore };
        var snapshots = new Option<string[]>("--snapshot", "-s") { Description = "Search only this snapshot (id, prefix or 'latest'; repeatable)" };
        var ignoreCase = new Option<bool>("--ignore-case", "-i") { Description = "Match without regard to case" };
        var filter = new SnapshotFilterOptions();
        var command = new Command("find", "Find files and folders by name or path in snapshots") { patterns, snapshots, ignoreCase };
        filter.AddTo(command);
        command.Description += """


            A pattern without '/' is matched against each entry's name: '*' and '?' and '[...]' as in the shell.
            A pattern with '/' is matched against the whole path (PathPattern syntax, as for --exclude): '**' spans any
            number of folders; a pattern starting with '/' is anchored at the root, others may start at any folder.
            Each match is printed with its snapshot, size and modification time.
            Exit codes: 0 searched (also when nothing matched); 17 no such snapshot.

            Examples:
              haven find '*.odt'
              haven find --host laptop 'report-202?-*.pdf' --json
              haven find '/home/*/.ssh/**' --snapshot latest
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            bool fold = p.GetValue(ignoreCase);
            var matchers = (p.GetValue(patterns) ?? []).Select(x => new FindPattern(x, fold)).ToList();
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var selected = await SnapshotReferences.SelectAsync(repo, p.GetValue(snapshots) ?? [], filter.Get(p), ct);
            var results = new JsonArray();
            long found = 0;
            foreach (var (id, snap) in selected)
            {
                bool header = false;
                var finder = new SnapshotFinder(repo, (components, _) => matchers.Any(m => m.Matches(components)))
                {
                    OnDamaged = (path, e) => Output.Warn($"snapshot {id.Short}: {path}: {e.Message}"),
                };
                await finder.FindAsync(snap.TreeId, (path, node) =>
                {
                    found++;
                    if (ctx.Output.IsJson)
                    {
                        results.Add(new JsonObject
                        {
                            ["snapshot"] = id.ToString(),
                            ["path"] = path,
                            ["type"] = node.Type.ToString().ToLowerInvariant(),
                            ["size"] = node.Size,
                            ["mtime"] = DateTimeOffset.FromUnixTimeMilliseconds(node.ModifyTimeNs / 1_000_000).ToString("O"),
                            ["mtime_ns"] = node.ModifyTimeNs,
                            ["mode"] = node.Mode,
                        });
                        return;
                    }

                    if (!header)
                    {
                        ctx.Output.Line($"snapshot {id.Short} of {string.Join(" ", snap.Paths)} at {snap.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss}:");
                        header = true;
                    }

                    string suffix = node.Type == FileType.Directory ? "/" : node.LinkTarget is { } t ? " -> " + PosixPath.ToDisplay(t) : "";
                    ctx.Output.Line($"  {LsCommand.ModeString(node)} {node.Size,12} {LsCommand.FormatTime(node.ModifyTimeNs)} {path}{suffix}");
                }, ct);
            }

            ctx.Output.Line(found == 0 ? $"nothing found in {selected.Count} snapshot(s)" : $"{Units.Count(found)} match(es) in {selected.Count} snapshot(s)");
            ctx.Output.JsonResult(new JsonObject { ["snapshots_searched"] = selected.Count, ["matches"] = results });
            return ExitCodes.Success;
        });
        return command;
    }
}

/// <summary>
/// One <c>find</c> pattern. Without '/', a glob on the entry's name (<see cref="PathPattern.Glob"/>). With '/', a
/// <see cref="PathPattern"/> over the whole path, but matched exactly: the pattern must cover every component, so
/// '/home/*/docs' finds the docs folders, not everything in them (add '/**' for that).
/// </summary>
public sealed class FindPattern
{
    private readonly string[]? _parts;
    private readonly string? _glob;
    private readonly bool _anchored;
    private readonly bool _ignoreCase;

    public FindPattern(string pattern, bool ignoreCase)
    {
        _ = new PathPattern(pattern, ignoreCase); // validates: not empty, not only slashes
        _ignoreCase = ignoreCase;
        string p = ignoreCase ? pattern.ToLowerInvariant() : pattern;
        if (p.Contains('/'))
        {
            _anchored = p.StartsWith('/');
            _parts = p.Split('/', StringSplitOptions.RemoveEmptyEntries);
        }
        else
        {
            _glob = p;
        }
    }

    public bool Matches(IReadOnlyList<string> components)
    {
        if (components.Count == 0)
        {
            return false;
        }

        if (_glob is not null)
        {
            return PathPattern.Glob(_glob, Fold(components[^1]));
        }

        var c = components.Select(Fold).ToArray();
        if (_anchored)
        {
            return MatchFrom(0, c, 0);
        }

        for (int start = 0; start < c.Length; start++)
        {
            if (MatchFrom(0, c, start))
            {
                return true;
            }
        }

        return false;
    }

    private string Fold(string s) => _ignoreCase ? s.ToLowerInvariant() : s;

    // True when parts[pi..] matches all of components[ci..].
    private bool MatchFrom(int pi, string[] components, int ci)
    {
        if (pi == _parts!.Length)
        {
            return ci == components.Length;
        }

        if (_parts[pi] == "**")
        {
            for (int k = ci; k <= components.Length; k++)
            {
                if (MatchFrom(pi + 1, components, k))
                {
                    return true;
                }
            }

            return false;
        }

        return ci < components.Length && PathPattern.Glob(_parts[pi], components[ci]) && MatchFrom(pi + 1, components, ci + 1);
    }
}
