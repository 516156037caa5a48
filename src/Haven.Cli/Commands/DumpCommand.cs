using System.CommandLine;
using System.Formats.Tar;
using System.Text.Json.Nodes;
using System.Text.Unicode;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;

namespace Haven.Cli.Commands;

public static class DumpCommand
{
    public static Command Build()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Snapshot id, unique prefix or 'latest'" };
        var path = new Argument<string>("path") { Description = "The file or folder in the snapshot ('/' for all of it)" };
        var target = new Option<string?>("--target", "-t") { Description = "Write to this file instead of standard output" };
        var filter = new SnapshotFilterOptions();
        var command = new Command("dump", "Write a file of a snapshot to standard output, or a folder as a tar archive") { snapshot, path, target };
        filter.AddTo(command);
        command.Description += """


            A file is written as it is. A folder is written as a POSIX (pax) tar archive of the folder and everything
            in it, named from the folder's own name down, with modes, owners, mtimes, symlinks, hard links, device
            nodes, FIFOs and UTF-8 extended attributes. Sockets are left out. Names that are not UTF-8 appear with
            \xNN escapes. A tar archive is not written to a terminal: redirect it or use --target.
            With --json, a summary is printed to standard output only together with --target.
            Exit codes: 0 written; 14 data of the snapshot is missing ('haven check'); 17 no such snapshot or path.

            Examples:
              haven dump latest /etc/fstab
              haven dump 1a2b3c4d /home/user/Documents > documents.tar
              haven dump latest /home/user --target /tmp/home.tar
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            string wanted = p.GetValue(path)!;
            string? file = p.GetValue(target);
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var (id, snap) = await repo.FindSnapshotAsync(p.GetValue(snapshot)!, filter.Get(p), ct);
            var (node, name) = await ResolveAsync(repo, id, snap.TreeId, wanted, ct);
            if (node is not null && node.Type != FileType.Regular && node.Type != FileType.Directory)
            {
                throw new HavenException(ErrorCode.Usage, $"'{wanted}' in snapshot {id.Short} is a {node.Type.ToString().ToLowerInvariant()}; dump writes files and folders");
            }

            bool isFile = node is { Type: FileType.Regular };
            if (!isFile && file is null && !Console.IsOutputRedirected)
            {
                throw new HavenException(ErrorCode.Usage, "refusing to write a tar archive to a terminal", "redirect standard output to a file or pipe, or pass --target FILE");
            }

            long bytes;
            long entries = 1;
            await using (var output = file is null ? Console.OpenStandardOutput() : new FileStream(file, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true))
            {
                if (isFile)
                {
                    using var content = new BlobStream(repo, node!.Content ?? []);
                    await content.CopyToAsync(output, 1 << 20, ct);
                    bytes = content.Length;
                }
                else
                {
                    var archive = new TarArchiver(repo);
                    await using (var writer = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true))
                    {
                        if (node is null)
                        {
                            await archive.AddChildrenAsync(writer, snap.TreeId, "", ct);
                        }
                        else
                        {
                            await archive.AddAsync(writer, node, name, ct);
                        }
                    }

                    bytes = archive.Bytes;
                    entries = archive.Entries;
                    foreach (var skipped in archive.Skipped)
                    {
                        Output.Warn($"{skipped}: sockets cannot be stored in a tar archive; left out");
                    }
                }

                await output.FlushAsync(ct);
            }

            if (file is not null)
            {
                ctx.Output.Line(isFile ? $"wrote {Units.Bytes(bytes)} to {file}" : $"wrote a tar archive of {Units.Count(entries)} entries ({Units.Bytes(bytes)} of file data) to {file}");
                ctx.Output.JsonResult(new JsonObject
                {
                    ["snapshot"] = id.ToString(),
                    ["path"] = wanted,
                    ["target"] = file,
                    ["format"] = isFile ? "file" : "tar",
                    ["entries"] = entries,
                    ["bytes"] = bytes,
                });
            }

            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The node at <paramref name="path"/> and its name, or (null, "") for the root.</summary>
    private static async Task<(Node? Node, string Name)> ResolveAsync(Haven.Repository.Repository repo, ObjectId id, ObjectId root, string path, CancellationToken ct)
    {
        var components = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        Node? node = null;
        var tree = root;
        for (int i = 0; i < components.Length; i++)
        {
            if (i > 0)
            {
                tree = node is { Type: FileType.Directory, Subtree: { } sub }
                    ? sub
                    : throw new HavenException(ErrorCode.NotFound, $"'{string.Join('/', components[..i])}' in snapshot {id.Short} is not a folder");
            }

            node = (await repo.LoadTreeAsync(tree, ct)).FirstOrDefault(n => n.DisplayName == components[i])
                ?? throw new HavenException(ErrorCode.NotFound, $"snapshot {id.Short} has no '/{string.Join('/', components[..(i + 1)])}'", $"list it with 'haven ls {id.Short}'");
        }

        return (node, components.Length == 0 ? "" : components[^1]);
    }

    /// <summary>Writes trees as tar entries; hard links (equal device and inode, more than one link) become link entries.</summary>
    private sealed class TarArchiver(Haven.Repository.Repository repo)
    {
        private readonly Dictionary<(ulong, ulong), string> _links = [];

        public long Bytes { get; private set; }

        public long Entries { get; private set; }

        public List<string> Skipped { get; } = [];

        public async Task AddChildrenAsync(TarWriter writer, ObjectId tree, string prefix, CancellationToken ct)
        {
            foreach (var child in await repo.LoadTreeAsync(tree, ct).ConfigureAwait(false))
            {
                await AddAsync(writer, child, prefix + child.DisplayName, ct).ConfigureAwait(false);
            }
        }

        public async Task AddAsync(TarWriter writer, Node node, string name, CancellationToken ct)
        {
            PaxTarEntry entry;
            switch (node.Type)
            {
                case FileType.Directory:
                    entry = New(TarEntryType.Directory, name + "/", node);
                    await writer.WriteEntryAsync(entry, ct).ConfigureAwait(false);
                    Entries++;
                    if (node.Subtree is { } sub)
                    {
                        await AddChildrenAsync(writer, sub, name + "/", ct).ConfigureAwait(false);
                    }

                    return;
                case FileType.Regular:
                    if (node.Links > 1 && _links.TryGetValue((node.DeviceId, node.Inode), out var first))
                    {
                        entry = New(TarEntryType.HardLink, name, node);
                        entry.LinkName = first;
                        break;
                    }

                    if (node.Links > 1)
                    {
                        _links[(node.DeviceId, node.Inode)] = name;
                    }

                    entry = New(TarEntryType.RegularFile, name, node);
                    using (var content = new BlobStream(repo, node.Content ?? []))
                    {
                        entry.DataStream = content;
                        await writer.WriteEntryAsync(entry, ct).ConfigureAwait(false);
                        Bytes += content.Length;
                    }

                    Entries++;
                    return;
                case FileType.Symlink:
                    entry = New(TarEntryType.SymbolicLink, name, node);
                    entry.LinkName = PosixPath.ToDisplay(node.LinkTarget ?? []);
                    break;
                case FileType.CharDevice:
                case FileType.BlockDevice:
                    entry = New(node.Type == FileType.CharDevice ? TarEntryType.CharacterDevice : TarEntryType.BlockDevice, name, node);
                    var (major, minor) = Posix.SplitDevice(node.RDev);
                    entry.DeviceMajor = (int)major;
                    entry.DeviceMinor = (int)minor;
                    break;
                case FileType.Fifo:
                    entry = New(TarEntryType.Fifo, name, node);
                    break;
                default:
                    Skipped.Add(name);
                    return;
            }

            await writer.WriteEntryAsync(entry, ct).ConfigureAwait(false);
            Entries++;
        }

        private static PaxTarEntry New(TarEntryType type, string name, Node node)
        {
            var attributes = new Dictionary<string, string>();
            foreach (var x in node.Xattrs ?? [])
            {
                // Pax records are UTF-8 text: attributes with binary names or values cannot be carried faithfully.
                if (Utf8.IsValid(x.Name) && Utf8.IsValid(x.Value))
                {
                    attributes["SCHILY.xattr." + System.Text.Encoding.UTF8.GetString(x.Name)] = System.Text.Encoding.UTF8.GetString(x.Value);
                }
            }

            var entry = new PaxTarEntry(type, name, attributes)
            {
                Mode = (UnixFileMode)(node.Mode & 0xFFF),
                Uid = (int)node.Uid,
                Gid = (int)node.Gid,
                ModificationTime = DateTimeOffset.UnixEpoch.AddTicks(node.ModifyTimeNs / 100),
            };
            if (node.User is not null)
            {
                entry.UserName = node.User;
            }

            if (node.Group is not null)
            {
                entry.GroupName = node.Group;
            }

            return entry;
        }
    }
}

/// <summary>
/// A file's content as a read-only, seekable stream: its data blobs are read from the repository one at a time as the
/// reader reaches them, so a file of any size needs one chunk of memory. The length comes from the index, so a file
/// whose data is not indexed fails before anything of it is written.
/// </summary>
internal sealed class BlobStream : Stream
{
    private readonly Haven.Repository.Repository _repo;
    private readonly IReadOnlyList<ObjectId> _blobs;
    private readonly long[] _starts;
    private long _position;
    private int _current = -1;
    private byte[] _data = [];

    public BlobStream(Haven.Repository.Repository repo, IReadOnlyList<ObjectId> blobs)
    {
        _repo = repo;
        _blobs = blobs;
        _starts = new long[blobs.Count + 1];
        for (int i = 0; i < blobs.Count; i++)
        {
            if (!repo.TryLocate(blobs[i], out var location))
            {
                throw new HavenException(ErrorCode.Corrupt, $"blob {blobs[i].Short} is referenced but no index knows it", "run 'haven check', then 'haven repair index' and 'haven repair snapshots'");
            }

            _starts[i + 1] = _starts[i] + location.Blob.RawLength;
        }
    }

    public override bool CanRead => true;

    public override bool CanSeek => true;

    public override bool CanWrite => false;

    public override long Length => _starts[^1];

    public override long Position
    {
        get => _position;
        set => _position = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(value));
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        var temp = new byte[buffer.Length];
        int n = ReadAsync(temp, CancellationToken.None).AsTask().GetAwaiter().GetResult();
        temp.AsSpan(0, n).CopyTo(buffer);
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_position >= Length || buffer.IsEmpty)
        {
            return 0;
        }

        int index = Array.BinarySearch(_starts, _position);
        index = index >= 0 ? index : ~index - 1;
        while (_starts[index + 1] == _starts[index])
        {
            index++; // empty blobs take no room
        }

        if (index != _current)
        {
            _data = await _repo.ReadBlobAsync(_blobs[index], cancellationToken).ConfigureAwait(false);
            _current = index;
        }

        int within = (int)(_position - _starts[index]);
        int n = (int)Math.Min(buffer.Length, _data.Length - within);
        _data.AsMemory(within, n).CopyTo(buffer);
        _position += n;
        return n;
    }

    public override long Seek(long offset, SeekOrigin origin) => Position = origin switch
    {
        SeekOrigin.Begin => offset,
        SeekOrigin.Current => _position + offset,
        _ => Length + offset,
    };

    public override void Flush()
    {
    }

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
