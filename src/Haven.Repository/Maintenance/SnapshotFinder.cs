using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;

namespace Haven.Repository.Maintenance;

/// <summary>
/// Walks a snapshot's tree and reports the entries a predicate accepts; the predicate sees the entry's path components
/// (from the snapshot root: "home", "user", "file.txt") and its node. The matching rules (globs, path patterns) belong
/// to the caller: <c>haven find</c> builds them from <c>Haven.Files.Filters.PathPattern</c>.
/// A tree that cannot be read is reported through <see cref="OnDamaged"/> and skipped, so one damaged directory
/// does not hide the rest of the snapshot.
/// </summary>
public sealed class SnapshotFinder(Repository repo, Func<IReadOnlyList<string>, Node, bool> match)
{
    /// <summary>Called with the directory path and the error when a tree cannot be read.</summary>
    public Action<string, HavenException>? OnDamaged { get; init; }

    /// <summary>Calls <paramref name="onMatch"/> with the path ("/home/user/file.txt") and node of each match, in path order.</summary>
    public Task FindAsync(ObjectId tree, Action<string, Node> onMatch, CancellationToken ct) => WalkAsync(tree, [], onMatch, ct);

    private async Task WalkAsync(ObjectId tree, List<string> components, Action<string, Node> onMatch, CancellationToken ct)
    {
        List<Node> nodes;
        try
        {
            nodes = await repo.LoadTreeAsync(tree, ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.Corrupt && OnDamaged is not null)
        {
            OnDamaged("/" + string.Join('/', components), e);
            return;
        }

        foreach (var node in nodes)
        {
            components.Add(node.DisplayName);
            if (match(components, node))
            {
                onMatch("/" + string.Join('/', components), node);
            }

            if (node.Type == FileType.Directory && node.Subtree is { } sub)
            {
                await WalkAsync(sub, components, onMatch, ct).ConfigureAwait(false);
            }

            components.RemoveAt(components.Count - 1);
        }
    }
}
