using Haven.Core;
using Haven.Core.Posix;

namespace Haven.Repository.Model;

/// <summary>An extended attribute: name and value as raw bytes.</summary>
public sealed record Xattr(byte[] Name, byte[] Value);

/// <summary>
/// One entry of a directory as stored in a tree blob. Names, link targets and attribute names are raw bytes:
/// Linux does not promise UTF-8.
/// </summary>
public sealed class Node
{
    public required byte[] Name { get; init; }

    public FileType Type { get; init; }

    /// <summary>Permission bits including setuid, setgid and sticky (st_mode &amp; 07777).</summary>
    public uint Mode { get; init; }

    public uint Uid { get; init; }

    public uint Gid { get; init; }

    public string? User { get; init; }

    public string? Group { get; init; }

    public long Size { get; init; }

    public long ModifyTimeNs { get; init; }

    public long AccessTimeNs { get; init; }

    public long ChangeTimeNs { get; init; }

    public ulong Inode { get; init; }

    public ulong DeviceId { get; init; }

    public ulong Links { get; init; }

    public ulong RDev { get; init; }

    /// <summary>For regular files: the data blobs, in order.</summary>
    public IReadOnlyList<ObjectId>? Content { get; init; }

    /// <summary>For directories: the tree blob of its entries.</summary>
    public ObjectId? Subtree { get; init; }

    public byte[]? LinkTarget { get; init; }

    public IReadOnlyList<Xattr>? Xattrs { get; init; }

    public string DisplayName => PosixPath.ToDisplay(Name);
}

/// <summary>
/// The binary encoding of a directory (normative: docs/design/repository-format.md, "Trees").
/// <c>version (1) ‖ count ‖ node*</c>; a node is <c>field count ‖ (tag ‖ length-prefixed value)*</c>, so readers skip
/// tags they do not know. Nodes are sorted by name (byte order) and names are unique.
/// </summary>
public static class TreeCodec
{
    public const byte Version = 1;

    /// <summary>Field tags. Persisted: never renumber or reuse.</summary>
    public enum Tag
    {
        Name = 1,
        Type = 2,
        Mode = 3,
        Uid = 4,
        Gid = 5,
        User = 6,
        Group = 7,
        Size = 8,
        ModifyTime = 9,
        AccessTime = 10,
        ChangeTime = 11,
        Inode = 12,
        Device = 13,
        Links = 14,
        Content = 15,
        Subtree = 16,
        LinkTarget = 17,
        RDev = 18,
        Xattr = 19,
    }

    private const int MaxNodes = 10_000_000;

    public static byte[] Encode(IReadOnlyList<Node> nodes)
    {
        var w = new WireWriter(64 + (nodes.Count * 96));
        var node = new NodeWriter();
        w.Byte(Version);
        w.VarUInt((ulong)nodes.Count);
        foreach (var n in nodes)
        {
            node.Begin();
            node.Bytes(Tag.Name, n.Name);
            node.UInt(Tag.Type, (ulong)n.Type);
            node.UInt(Tag.Mode, n.Mode);
            node.UInt(Tag.Uid, n.Uid);
            node.UInt(Tag.Gid, n.Gid);
            node.Text(Tag.User, n.User);
            node.Text(Tag.Group, n.Group);
            node.UInt(Tag.Size, (ulong)n.Size);
            node.Int(Tag.ModifyTime, n.ModifyTimeNs);
            node.Int(Tag.AccessTime, n.AccessTimeNs);
            node.Int(Tag.ChangeTime, n.ChangeTimeNs);
            node.UInt(Tag.Inode, n.Inode);
            node.UInt(Tag.Device, n.DeviceId);
            node.UInt(Tag.Links, n.Links);
            node.UInt(Tag.RDev, n.RDev);
            if (n.Content is { Count: > 0 } content)
            {
                node.Ids(Tag.Content, content);
            }

            if (n.Subtree is { } subtree)
            {
                node.Ids(Tag.Subtree, [subtree]);
            }

            if (n.LinkTarget is not null)
            {
                node.Bytes(Tag.LinkTarget, n.LinkTarget);
            }

            foreach (var x in n.Xattrs ?? [])
            {
                node.Xattr(x);
            }

            node.WriteTo(w);
        }

        return w.WrittenSpan.ToArray();
    }

    /// <summary>Collects one node's fields, then writes the field count and the fields (reused for every node).</summary>
    private sealed class NodeWriter
    {
        private readonly WireWriter _fields = new(256);
        private readonly WireWriter _value = new(64);
        private int _count;

        public void Begin()
        {
            _fields.Clear();
            _count = 0;
        }

        public void Bytes(Tag tag, ReadOnlySpan<byte> value)
        {
            _fields.VarUInt((ulong)tag);
            _fields.Bytes(value);
            _count++;
        }

        public void UInt(Tag tag, ulong value)
        {
            if (value != 0)
            {
                _value.Clear();
                _value.VarUInt(value);
                Bytes(tag, _value.WrittenSpan);
            }
        }

        public void Int(Tag tag, long value)
        {
            if (value != 0)
            {
                _value.Clear();
                _value.VarInt(value);
                Bytes(tag, _value.WrittenSpan);
            }
        }

        public void Text(Tag tag, string? value)
        {
            if (value is not null)
            {
                Span<byte> buffer = stackalloc byte[256];
                int max = System.Text.Encoding.UTF8.GetMaxByteCount(value.Length);
                if (max <= buffer.Length)
                {
                    Bytes(tag, buffer[..System.Text.Encoding.UTF8.GetBytes(value, buffer)]);
                }
                else
                {
                    Bytes(tag, System.Text.Encoding.UTF8.GetBytes(value));
                }
            }
        }

        public void Ids(Tag tag, IReadOnlyList<ObjectId> ids)
        {
            _fields.VarUInt((ulong)tag);
            _fields.VarUInt((ulong)(ids.Count * ObjectId.Size));
            foreach (var id in ids)
            {
                _fields.Id(id);
            }

            _count++;
        }

        public void Xattr(Xattr x)
        {
            _value.Clear();
            _value.Bytes(x.Name);
            _value.Bytes(x.Value);
            Bytes(Tag.Xattr, _value.WrittenSpan);
        }

        public void WriteTo(WireWriter w)
        {
            w.VarUInt((ulong)_count);
            w.Raw(_fields.WrittenSpan);
        }
    }

    /// <summary>Decodes a tree; throws <see cref="MalformedDataException"/> on anything malformed or unsafe.</summary>
    public static List<Node> Decode(ReadOnlySpan<byte> data)
    {
        var r = new WireReader(data);
        byte version = r.Byte();
        if (version != Version)
        {
            WireReader.Fail($"tree version {version} is unknown");
        }

        int count = r.Count(Math.Min(MaxNodes, r.Remaining));
        var nodes = new List<Node>(count);
        byte[]? previous = null;
        for (int i = 0; i < count; i++)
        {
            var node = DecodeNode(ref r);
            if (!PosixPath.IsValidName(node.Name))
            {
                WireReader.Fail($"entry name '{node.DisplayName}' is not a valid file name");
            }

            if (previous is not null && previous.AsSpan().SequenceCompareTo(node.Name) >= 0)
            {
                WireReader.Fail($"entries are not sorted or not unique at '{node.DisplayName}'");
            }

            previous = node.Name;
            nodes.Add(node);
        }

        if (!r.AtEnd)
        {
            WireReader.Fail("trailing bytes after the last entry");
        }

        return nodes;
    }

    private static Node DecodeNode(ref WireReader r)
    {
        int fields = r.Count(64);
        byte[]? name = null;
        FileType type = FileType.Unknown;
        uint mode = 0, uid = 0, gid = 0;
        string? user = null, group = null;
        long size = 0, mtime = 0, atime = 0, ctime = 0;
        ulong inode = 0, dev = 0, links = 0, rdev = 0;
        List<ObjectId>? content = null;
        ObjectId? subtree = null;
        byte[]? target = null;
        List<Xattr>? xattrs = null;
        for (int f = 0; f < fields; f++)
        {
            ulong tag = r.VarUInt();
            var value = r.Bytes();
            var v = new WireReader(value);
            switch ((Tag)tag)
            {
                case Tag.Name: name = value.ToArray(); break;
                case Tag.Type: type = (FileType)v.VarUInt(); break;
                case Tag.Mode: mode = (uint)v.VarUInt(); break;
                case Tag.Uid: uid = (uint)v.VarUInt(); break;
                case Tag.Gid: gid = (uint)v.VarUInt(); break;
                case Tag.User: user = System.Text.Encoding.UTF8.GetString(value); break;
                case Tag.Group: group = System.Text.Encoding.UTF8.GetString(value); break;
                case Tag.Size: size = (long)v.VarUInt(); break;
                case Tag.ModifyTime: mtime = v.VarInt(); break;
                case Tag.AccessTime: atime = v.VarInt(); break;
                case Tag.ChangeTime: ctime = v.VarInt(); break;
                case Tag.Inode: inode = v.VarUInt(); break;
                case Tag.Device: dev = v.VarUInt(); break;
                case Tag.Links: links = v.VarUInt(); break;
                case Tag.RDev: rdev = v.VarUInt(); break;
                case Tag.Content:
                    if (value.Length % ObjectId.Size != 0)
                    {
                        WireReader.Fail("content list length is not a multiple of 32");
                    }

                    content = new List<ObjectId>(value.Length / ObjectId.Size);
                    for (int i = 0; i < value.Length; i += ObjectId.Size)
                    {
                        content.Add(new ObjectId(value.Slice(i, ObjectId.Size)));
                    }

                    break;
                case Tag.Subtree:
                    if (value.Length != ObjectId.Size)
                    {
                        WireReader.Fail("subtree id is not 32 bytes");
                    }

                    subtree = new ObjectId(value);
                    break;
                case Tag.LinkTarget: target = value.ToArray(); break;
                case Tag.Xattr:
                    (xattrs ??= []).Add(new Xattr(v.Bytes().ToArray(), v.Bytes().ToArray()));
                    break;
                default:
                    break; // a field from a newer writer: skipped
            }
        }

        if (name is null)
        {
            WireReader.Fail("entry without a name");
        }

        if (type is < FileType.Regular or > FileType.Socket)
        {
            WireReader.Fail($"entry '{PosixPath.ToDisplay(name)}' has unknown type {(int)type}");
        }

        return new Node
        {
            Name = name!,
            Type = type,
            Mode = mode,
            Uid = uid,
            Gid = gid,
            User = user,
            Group = group,
            Size = size,
            ModifyTimeNs = mtime,
            AccessTimeNs = atime,
            ChangeTimeNs = ctime,
            Inode = inode,
            DeviceId = dev,
            Links = links,
            RDev = rdev,
            Content = content,
            Subtree = subtree,
            LinkTarget = target,
            Xattrs = xattrs,
        };
    }
}
