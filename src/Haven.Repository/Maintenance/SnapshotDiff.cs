using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;

namespace Haven.Repository.Maintenance;

/// <summary>How an entry differs between two snapshots. The letters are what <c>haven diff</c> prints.</summary>
public enum DiffKind
{
    /// <summary>"+": only in the second snapshot.</summary>
    Added,

    /// <summary>"-": only in the first snapshot.</summary>
    Removed,

    /// <summary>"M": content changed (file data, symlink target or device number).</summary>
    Modified,

    /// <summary>"U": same content, other metadata (mode, owner, mtime or extended attributes).</summary>
    Metadata,
}

/// <summary>One difference; <paramref name="Path"/> is absolute within the snapshots ("/home/user/file").</summary>
public sealed record DiffEntry(string Path, DiffKind Kind, Node? Old, Node? New)
{
    public FileType Type => (New ?? Old)!.Type;
}

/// <summary>Totals of a diff. Entries counts every entry of a kind (files, directories and others); bytes are file sizes.</summary>
public sealed record DiffTotals(
    long Added,
    long Removed,
    long Modified,
    long Metadata,
    long FilesAdded,
    long FilesRemoved,
    long FilesModified,
    long DirectoriesAdded,
    long DirectoriesRemoved,
    long BytesAdded,
    long BytesRemoved);

/// <summary>
/// Compares two trees of one repository (so their blob ids are comparable), recursively. Subtrees with equal ids are
/// equal and skipped without being read, so diffing two backups of a large, mostly unchanged tree reads only the
/// directories on the paths to what changed. An entry whose type changed is reported as removed and added. Of the
/// metadata, mode, owner (ids and names), mtime and extended attributes count; atime, ctime, inode, device and link
/// count do not (they change when nothing a user cares about did, e.g. after a restore).
/// </summary>
public sealed class SnapshotDiff(Repository repo)
{
    private long _added, _removed, _modified, _metadata, _filesAdded, _filesRemoved, _filesModified, _dirsAdded, _dirsRemoved, _bytesAdded, _bytesRemoved;

    /// <summary>Calls <paramref name="onEntry"/> for each difference, in path order; returns the totals.</summary>
    public async Task<DiffTotals> CompareAsync(ObjectId first, ObjectId second, Action<DiffEntry> onEntry, CancellationToken ct)
    {
        await CompareTreesAsync(first, second, "", onEntry, ct).ConfigureAwait(false);
        return new DiffTotals(_added, _removed, _modified, _metadata, _filesAdded, _filesRemoved, _filesModified, _dirsAdded, _dirsRemoved, _bytesAdded, _bytesRemoved);
    }

    private async Task CompareTreesAsync(ObjectId first, ObjectId second, string prefix, Action<DiffEntry> onEntry, CancellationToken ct)
    {
        if (first == second)
        {
            return;
        }

        var a = await repo.LoadTreeAsync(first, ct).ConfigureAwait(false);
        var b = await repo.LoadTreeAsync(second, ct).ConfigureAwait(false);
        int i = 0, j = 0;
        while (i < a.Count || j < b.Count)
        {
            int order = i == a.Count ? 1 : j == b.Count ? -1 : a[i].Name.AsSpan().SequenceCompareTo(b[j].Name);
            if (order < 0)
            {
                await ReportAllAsync(a[i++], prefix, DiffKind.Removed, onEntry, ct).ConfigureAwait(false);
                continue;
            }

            if (order > 0)
            {
                await ReportAllAsync(b[j++], prefix, DiffKind.Added, onEntry, ct).ConfigureAwait(false);
                continue;
            }

            var old = a[i++];
            var now = b[j++];
            string path = prefix + "/" + now.DisplayName;
            if (old.Type != now.Type)
            {
                await ReportAllAsync(old, prefix, DiffKind.Removed, onEntry, ct).ConfigureAwait(false);
                await ReportAllAsync(now, prefix, DiffKind.Added, onEntry, ct).ConfigureAwait(false);
                continue;
            }

            if (old.Type == FileType.Directory)
            {
                if (!SameMetadata(old, now))
                {
                    Report(new DiffEntry(path, DiffKind.Metadata, old, now), onEntry);
                }

                if (old.Subtree is { } sa && now.Subtree is { } sb)
                {
                    await CompareTreesAsync(sa, sb, path, onEntry, ct).ConfigureAwait(false);
                }

                continue;
            }

            if (!SameContent(old, now))
            {
                Report(new DiffEntry(path, DiffKind.Modified, old, now), onEntry);
            }
            else if (!SameMetadata(old, now))
            {
                Report(new DiffEntry(path, DiffKind.Metadata, old, now), onEntry);
            }
        }
    }

    /// <summary>Reports a node and, for a directory, everything below it.</summary>
    private async Task ReportAllAsync(Node node, string prefix, DiffKind kind, Action<DiffEntry> onEntry, CancellationToken ct)
    {
        string path = prefix + "/" + node.DisplayName;
        Report(kind == DiffKind.Added ? new DiffEntry(path, kind, null, node) : new DiffEntry(path, kind, node, null), onEntry);
        if (node.Type == FileType.Directory && node.Subtree is { } sub)
        {
            foreach (var child in await repo.LoadTreeAsync(sub, ct).ConfigureAwait(false))
            {
                await ReportAllAsync(child, path, kind, onEntry, ct).ConfigureAwait(false);
            }
        }
    }

    private void Report(DiffEntry entry, Action<DiffEntry> onEntry)
    {
        bool file = entry.Type == FileType.Regular;
        bool dir = entry.Type == FileType.Directory;
        switch (entry.Kind)
        {
            case DiffKind.Added:
                _added++;
                if (file) { _filesAdded++; _bytesAdded += entry.New!.Size; }
                if (dir) _dirsAdded++;
                break;
            case DiffKind.Removed:
                _removed++;
                if (file) { _filesRemoved++; _bytesRemoved += entry.Old!.Size; }
                if (dir) _dirsRemoved++;
                break;
            case DiffKind.Modified:
                _modified++;
                if (file) _filesModified++;
                break;
            default:
                _metadata++;
                break;
        }

        onEntry(entry);
    }

    private static bool SameContent(Node a, Node b) => a.Type switch
    {
        FileType.Regular => a.Size == b.Size && (a.Content ?? []).SequenceEqual(b.Content ?? []),
        FileType.Symlink => (a.LinkTarget ?? []).AsSpan().SequenceEqual(b.LinkTarget ?? []),
        FileType.CharDevice or FileType.BlockDevice => a.RDev == b.RDev,
        _ => true,
    };

    private static bool SameMetadata(Node a, Node b) =>
        a.Mode == b.Mode && a.Uid == b.Uid && a.Gid == b.Gid && a.User == b.User && a.Group == b.Group
        && a.ModifyTimeNs == b.ModifyTimeNs && SameXattrs(a.Xattrs, b.Xattrs);

    private static bool SameXattrs(IReadOnlyList<Xattr>? a, IReadOnlyList<Xattr>? b)
    {
        a ??= [];
        b ??= [];
        if (a.Count != b.Count)
        {
            return false;
        }

        var sortedA = a.OrderBy(x => Convert.ToHexString(x.Name), StringComparer.Ordinal).ToList();
        var sortedB = b.OrderBy(x => Convert.ToHexString(x.Name), StringComparer.Ordinal).ToList();
        for (int i = 0; i < sortedA.Count; i++)
        {
            if (!sortedA[i].Name.AsSpan().SequenceEqual(sortedB[i].Name) || !sortedA[i].Value.AsSpan().SequenceEqual(sortedB[i].Value))
            {
                return false;
            }
        }

        return true;
    }
}
