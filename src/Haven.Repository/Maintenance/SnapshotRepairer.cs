using System.Collections.Concurrent;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;
using Haven.Storage;

namespace Haven.Repository.Maintenance;

/// <summary>What <see cref="SnapshotRepairer"/> does.</summary>
public sealed record SnapshotRepairOptions
{
    /// <summary>Only these snapshot files; null means every snapshot of the repository.</summary>
    public IReadOnlyCollection<ObjectId>? Snapshots { get; init; }

    /// <summary>Delete each original once its repaired version is saved, and delete snapshot files that do not open.</summary>
    public bool Forget { get; init; }

    /// <summary>Find and report the damage, write nothing and delete nothing.</summary>
    public bool DryRun { get; init; }

    /// <summary>Added to the tags of every repaired snapshot.</summary>
    public string Tag { get; init; } = "repaired";

    /// <summary>Trees read at once.</summary>
    public int ReadConcurrency { get; init; } = 8;
}

public enum SnapshotRepairKind
{
    /// <summary>A tree blob was missing or damaged: the directory is kept, empty.</summary>
    DirectoryEmptied,

    /// <summary>A file referenced data that no index knows: the file is left out of the repaired snapshot.</summary>
    FileRemoved,
}

/// <summary>One change a repair made, at <paramref name="Path"/> ("/home/user/file") within the snapshot.</summary>
public sealed record SnapshotRepairChange(string Path, SnapshotRepairKind Kind, string Reason);

/// <summary>A snapshot that needed repair. <paramref name="Repaired"/> is null in a dry run.</summary>
public sealed record RepairedSnapshot(ObjectId Original, ObjectId? Repaired, IReadOnlyList<SnapshotRepairChange> Changes, bool OriginalRemoved);

/// <summary>A snapshot file that cannot be opened or parsed; <paramref name="Removed"/> when it was deleted (with Forget).</summary>
public sealed record DamagedSnapshotFile(ObjectId Id, string Message, bool Removed);

public sealed record SnapshotRepairResult(
    int SnapshotsChecked,
    int SnapshotsUnchanged,
    IReadOnlyList<RepairedSnapshot> Repaired,
    IReadOnlyList<DamagedSnapshotFile> Damaged,
    long TreesWritten,
    bool DryRun);

/// <summary>
/// <c>repair snapshots</c>: makes every snapshot restorable again after data was lost, keeping everything that is still
/// there. For each selected snapshot its trees are walked:
/// <list type="bullet">
/// <item>a tree blob that is not indexed, cannot be read or does not decode: the directory becomes an empty one
/// (its own metadata, held by the parent tree, is kept); a directory without a subtree also gets an empty one;</item>
/// <item>a file whose data blobs are not all in the index: the file is <b>left out</b> of the repaired snapshot. restic keeps
/// such files with the missing parts cut out; Haven drops them because a restored file with silently missing pieces is
/// worse than a missing file the report names (a hard-linked group loses all its names, since they share the data).</item>
/// </list>
/// Only the index is consulted for data blobs (run <c>repair index</c> first, and <c>check --read-data</c> to find blobs
/// that are indexed but damaged). Changed trees are written bottom-up through a <see cref="BlobWriter"/>, which is
/// flushed before the repaired snapshot is saved; the new snapshot keeps the original's metadata, gains the tag
/// <see cref="SnapshotRepairOptions.Tag"/> and records the original's id in <c>original</c> (unless it already had
/// one). With <see cref="SnapshotRepairOptions.Forget"/> the original file is deleted afterwards. Snapshots without
/// damage are left alone. Snapshot files that fail to open are reported (and with Forget deleted); files of a newer
/// format are reported and never deleted.
/// An instance runs once. The caller holds an exclusive lock and has loaded the index. Trees are memoised by id, so a directory shared by many
/// snapshots is read and repaired once.
/// </summary>
public sealed class SnapshotRepairer(Repository repo, SnapshotRepairOptions options)
{
    private readonly ConcurrentDictionary<ObjectId, Lazy<Task<TreeFix>>> _fixes = new();
    private readonly SemaphoreSlim _reads = new(Math.Max(1, options.ReadConcurrency));
    private BlobWriter? _writer;
    private CancellationToken _ct;

    /// <summary>Called after each snapshot is handled (from the calling task).</summary>
    public Action<RepairedSnapshot>? OnRepaired { get; init; }

    /// <summary>What repairing one tree gives: its new id, and the changes below it with paths relative to it.</summary>
    private sealed record TreeFix(ObjectId Id, IReadOnlyList<SnapshotRepairChange> Changes)
    {
        public bool Changed => Changes.Count > 0;
    }

    public async Task<SnapshotRepairResult> RunAsync(CancellationToken ct)
    {
        _ct = ct;
        var ids = await repo.ListAsync(FileKind.Snapshot, ct).ConfigureAwait(false);
        if (options.Snapshots is { } only)
        {
            var missing = only.Where(id => !ids.Contains(id)).ToList();
            if (missing.Count > 0)
            {
                throw new HavenException(ErrorCode.NotFound, $"no snapshot {missing[0].Short} in {repo.Location}", "list them with 'haven snapshots'");
            }

            ids = ids.Where(only.Contains).ToList();
        }

        var damaged = new List<DamagedSnapshotFile>();
        var snapshots = new List<(ObjectId Id, Snapshot Snapshot)>();
        foreach (var id in ids)
        {
            try
            {
                snapshots.Add((id, await repo.LoadSnapshotAsync(id, ct).ConfigureAwait(false)));
            }
            catch (HavenException e) when (e.Code == ErrorCode.Corrupt)
            {
                bool remove = options.Forget && !options.DryRun;
                if (remove)
                {
                    await repo.Store.DeleteAsync(new StoreHandle(FileKind.Snapshot, id.ToString()), ct).ConfigureAwait(false);
                }

                damaged.Add(new DamagedSnapshotFile(id, e.Message, remove));
            }
            catch (HavenException e) when (e.Code == ErrorCode.UnsupportedFormat)
            {
                damaged.Add(new DamagedSnapshotFile(id, e.Message + " (left alone)", false));
            }
            catch (HavenException e) when (e.Code == ErrorCode.NotFound)
            {
                // Removed since the listing: nothing to repair.
            }
        }

        var repaired = new List<RepairedSnapshot>();
        int unchanged = 0;
        _writer = options.DryRun ? null : new BlobWriter(repo);
        try
        {
            foreach (var (id, snapshot) in snapshots.OrderBy(s => s.Snapshot.Time).ThenBy(s => s.Id))
            {
                var fix = await FixTreeAsync(snapshot.TreeId).ConfigureAwait(false);
                if (!fix.Changed)
                {
                    unchanged++;
                    continue;
                }

                var changes = fix.Changes.Select(c => c with { Path = "/" + c.Path }).ToList();
                ObjectId? newId = null;
                bool removed = false;
                if (_writer is not null)
                {
                    await _writer.FlushAsync(ct).ConfigureAwait(false);
                    var copy = snapshot with
                    {
                        Tree = fix.Id.ToString(),
                        Tags = snapshot.Tags.Contains(options.Tag) ? snapshot.Tags : [.. snapshot.Tags, options.Tag],
                        Original = snapshot.Original ?? id.ToString(),
                    };
                    newId = await repo.SaveSnapshotAsync(copy, ct).ConfigureAwait(false);
                    if (options.Forget)
                    {
                        await repo.Store.DeleteAsync(new StoreHandle(FileKind.Snapshot, id.ToString()), ct).ConfigureAwait(false);
                        removed = true;
                    }
                }

                var outcome = new RepairedSnapshot(id, newId, changes, removed);
                repaired.Add(outcome);
                OnRepaired?.Invoke(outcome);
            }

            if (_writer is not null)
            {
                await _writer.FlushAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            if (_writer is not null)
            {
                await _writer.DisposeAsync().ConfigureAwait(false);
            }
        }

        return new SnapshotRepairResult(snapshots.Count, unchanged, repaired, damaged, _writer?.BlobsAdded ?? 0, options.DryRun);
    }

    private Task<TreeFix> FixTreeAsync(ObjectId id) =>
        _fixes.GetOrAdd(id, key => new Lazy<Task<TreeFix>>(() => FixTreeCoreAsync(key))).Value;

    private async Task<TreeFix> FixTreeCoreAsync(ObjectId id)
    {
        List<Node> nodes;
        await _reads.WaitAsync(_ct).ConfigureAwait(false);
        try
        {
            nodes = await repo.LoadTreeAsync(id, _ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code is ErrorCode.Corrupt or ErrorCode.NotFound)
        {
            var empty = await SaveTreeAsync([]).ConfigureAwait(false);
            return new TreeFix(empty, [new SnapshotRepairChange("", SnapshotRepairKind.DirectoryEmptied, $"tree {id.Short}: {e.Message}")]);
        }
        finally
        {
            _reads.Release();
        }

        var subtrees = nodes.Select(n => n.Type == FileType.Directory && n.Subtree is { } sub ? FixTreeAsync(sub) : null).ToArray();
        await Task.WhenAll(subtrees.OfType<Task<TreeFix>>()).ConfigureAwait(false);

        var changes = new List<SnapshotRepairChange>();
        var repaired = new List<Node>(nodes.Count);
        for (int i = 0; i < nodes.Count; i++)
        {
            var node = nodes[i];
            string name = node.DisplayName;
            if (node.Type == FileType.Directory)
            {
                if (subtrees[i] is { } task)
                {
                    var fix = task.Result;
                    changes.AddRange(fix.Changes.Select(c => c with { Path = c.Path.Length == 0 ? name : name + "/" + c.Path }));
                    repaired.Add(fix.Changed ? node.With(subtree: fix.Id) : node);
                }
                else
                {
                    var empty = await SaveTreeAsync([]).ConfigureAwait(false);
                    changes.Add(new SnapshotRepairChange(name, SnapshotRepairKind.DirectoryEmptied, "the directory has no tree"));
                    repaired.Add(node.With(subtree: empty));
                }

                continue;
            }

            if (node.Content is { } content)
            {
                int lost = content.Count(b => !repo.Index.TryGet(b, out var location) || location.Blob.Type != BlobType.Data);
                if (lost > 0)
                {
                    changes.Add(new SnapshotRepairChange(name, SnapshotRepairKind.FileRemoved, $"{lost} of its {content.Count} data blob(s) are not in the index"));
                    continue;
                }
            }

            repaired.Add(node);
        }

        return changes.Count == 0 ? new TreeFix(id, []) : new TreeFix(await SaveTreeAsync(repaired).ConfigureAwait(false), changes);
    }

    private async Task<ObjectId> SaveTreeAsync(List<Node> nodes)
    {
        var bytes = TreeCodec.Encode(nodes);
        var id = repo.Key.BlobId(bytes);
        if (_writer is not null)
        {
            await _writer.SaveAsync(BlobType.Tree, id, bytes, _ct).ConfigureAwait(false);
        }

        return id;
    }
}

/// <summary>Copies of tree nodes with their references replaced, for the tools that rewrite trees (repair, copy).</summary>
internal static class NodeRewrite
{
    /// <summary>The node with every field kept except the subtree and/or content given.</summary>
    public static Node With(this Node node, ObjectId? subtree = null, IReadOnlyList<ObjectId>? content = null) => new()
    {
        Name = node.Name,
        Type = node.Type,
        Mode = node.Mode,
        Uid = node.Uid,
        Gid = node.Gid,
        User = node.User,
        Group = node.Group,
        Size = node.Size,
        ModifyTimeNs = node.ModifyTimeNs,
        AccessTimeNs = node.AccessTimeNs,
        ChangeTimeNs = node.ChangeTimeNs,
        Inode = node.Inode,
        DeviceId = node.DeviceId,
        Links = node.Links,
        RDev = node.RDev,
        Content = content ?? node.Content,
        Subtree = subtree ?? node.Subtree,
        LinkTarget = node.LinkTarget,
        Xattrs = node.Xattrs,
    };
}
