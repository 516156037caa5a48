using System.Buffers.Binary;
using System.Text;
using Haven.Core;

namespace Haven.Images;

/// <summary>An entry of an ext4 directory: name, inode, kind (d, f, l, or ? for others), size.</summary>
public sealed record Ext4Entry(string Name, uint Inode, char Kind, long Size, DateTimeOffset Modified);

/// <summary>
/// Reads files and directories of an ext2/3/4 filesystem inside an image snapshot, through an <see cref="ImageVolume"/>,
/// without restoring it: the superblock, group descriptors, inodes, extent trees (and ext2/3 block maps) and
/// directory blocks (hashed directories are read linearly: their index blocks look like empty entries). Small files
/// and directories of an inline_data filesystem are read from their inode: i_block and the "system.data" attribute.
/// </summary>
public sealed class Ext4Reader
{
    private readonly ImageVolume _volume;
    private readonly long _offset;
    private readonly long _blockSize;
    private readonly long _inodesPerGroup;
    private readonly int _inodeSize;
    private readonly long _firstDataBlock;
    private readonly int _descSize;

    private Ext4Reader(ImageVolume volume, long offset, long blockSize, long inodesPerGroup, int inodeSize, long firstDataBlock, int descSize)
    {
        _volume = volume;
        _offset = offset;
        _blockSize = blockSize;
        _inodesPerGroup = inodesPerGroup;
        _inodeSize = inodeSize;
        _firstDataBlock = firstDataBlock;
        _descSize = descSize;
    }

    /// <summary>Opens the filesystem at <paramref name="offset"/> (0, or a partition's first byte).</summary>
    public static async Task<Ext4Reader> OpenAsync(ImageVolume volume, long offset, CancellationToken ct)
    {
        var sb = new byte[1024];
        if (offset + 2048 > volume.Size)
        {
            throw NotExt4();
        }

        await volume.ReadAsync(offset + 1024, sb, ct).ConfigureAwait(false);
        return Ext4Superblock.Parse(sb) is { } s
            ? new Ext4Reader(volume, offset, s.BlockSize, s.InodesPerGroup, s.InodeSize, s.FirstDataBlock, s.DescriptorSize)
            : throw NotExt4();
    }

    private static HavenException NotExt4() =>
        new(ErrorCode.Usage, "the image (or the partition given) holds no ext2/3/4 filesystem", "name the partition with --partition N (see haven image info)");

    /// <summary>The entries of the directory at <paramref name="path"/> ("/" for the root), without "." and "..".</summary>
    public async Task<List<Ext4Entry>> ListAsync(string path, CancellationToken ct)
    {
        var (_, raw) = await ResolveAsync(path, ct).ConfigureAwait(false);
        if (Kind(raw) != 'd')
        {
            throw new HavenException(ErrorCode.Usage, $"{path} is not a directory");
        }

        var entries = new List<Ext4Entry>();
        foreach (var (name, child) in await ReadDirectoryAsync(raw, ct).ConfigureAwait(false))
        {
            if (name is "." or "..")
            {
                continue;
            }

            var childRaw = await ReadInodeAsync(child, ct).ConfigureAwait(false);
            entries.Add(new Ext4Entry(name, child, Kind(childRaw), Size(childRaw), DateTimeOffset.FromUnixTimeSeconds(BinaryPrimitives.ReadUInt32LittleEndian(childRaw.AsSpan(16)))));
        }

        return entries.OrderBy(e => e.Name, StringComparer.Ordinal).ToList();
    }

    /// <summary>Writes the regular file at <paramref name="path"/> to <paramref name="output"/>; holes come out as zeros.</summary>
    public async Task DumpAsync(string path, Stream output, CancellationToken ct)
    {
        var (_, raw) = await ResolveAsync(path, ct).ConfigureAwait(false);
        if (Kind(raw) != 'f')
        {
            throw new HavenException(ErrorCode.Usage, $"{path} is not a regular file");
        }

        long size = Size(raw);
        if (IsInline(raw))
        {
            var inline = InlineData(raw);
            if (inline.Length < size)
            {
                throw new HavenException(ErrorCode.Corrupt, $"{path} keeps {inline.Length} bytes inside its inode, fewer than its size of {size}", "run e2fsck on a restored copy");
            }

            await output.WriteAsync(inline.AsMemory(0, (int)size), ct).ConfigureAwait(false);
            return;
        }

        var buffer = new byte[_blockSize];
        long written = 0;
        foreach (var (logical, physical, count) in (await ExtentsAsync(raw, ct).ConfigureAwait(false)).OrderBy(e => e.Logical))
        {
            for (long i = 0; i < count && written < size; i++)
            {
                long fileOffset = (logical + i) * _blockSize;
                if (fileOffset >= size)
                {
                    break;
                }

                await WriteZerosAsync(output, fileOffset - written, buffer, ct).ConfigureAwait(false);
                written = fileOffset;
                int n = (int)Math.Min(_blockSize, size - fileOffset);
                if (physical < 0)
                {
                    Array.Clear(buffer);
                }
                else
                {
                    await ReadBlockAsync(physical + i, buffer, ct).ConfigureAwait(false);
                }

                await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                written += n;
            }
        }

        await WriteZerosAsync(output, size - written, buffer, ct).ConfigureAwait(false);
    }

    private static async Task WriteZerosAsync(Stream output, long count, byte[] buffer, CancellationToken ct)
    {
        Array.Clear(buffer);
        while (count > 0)
        {
            int n = (int)Math.Min(buffer.Length, count);
            await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            count -= n;
        }
    }

    private async Task<(uint Inode, byte[] Raw)> ResolveAsync(string path, CancellationToken ct)
    {
        uint inode = 2; // the root directory
        var raw = await ReadInodeAsync(inode, ct).ConfigureAwait(false);
        foreach (string part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (Kind(raw) != 'd')
            {
                throw new HavenException(ErrorCode.NotFound, $"{path}: a component before '{part}' is not a directory");
            }

            var match = (await ReadDirectoryAsync(raw, ct).ConfigureAwait(false)).FirstOrDefault(e => e.Name == part);
            if (match.Inode == 0)
            {
                throw new HavenException(ErrorCode.NotFound, $"{path} does not exist in the image", "list the folder with haven image ls");
            }

            inode = match.Inode;
            raw = await ReadInodeAsync(inode, ct).ConfigureAwait(false);
        }

        return (inode, raw);
    }

    private async Task<List<(string Name, uint Inode)>> ReadDirectoryAsync(byte[] raw, CancellationToken ct)
    {
        var entries = new List<(string, uint)>();
        if (IsInline(raw))
        {
            // Inline: the parent's inode number, then entries in the rest of i_block and in the system.data attribute.
            var inline = InlineData(raw);
            entries.Add(("..", BinaryPrimitives.ReadUInt32LittleEndian(inline)));
            Entries(inline.AsSpan(4, 56), entries);
            Entries(inline.AsSpan(60), entries);
            return entries;
        }

        var block = new byte[_blockSize];
        foreach (var (_, physical, count) in await ExtentsAsync(raw, ct).ConfigureAwait(false))
        {
            for (long i = 0; i < count && physical >= 0; i++)
            {
                await ReadBlockAsync(physical + i, block, ct).ConfigureAwait(false);
                Entries(block, entries);
            }
        }

        return entries;
    }

    /// <summary>The entries of a run of directory records.</summary>
    private static void Entries(ReadOnlySpan<byte> records, List<(string, uint)> entries)
    {
        for (int at = 0; at + 8 <= records.Length;)
        {
            uint child = BinaryPrimitives.ReadUInt32LittleEndian(records[at..]);
            int recLen = BinaryPrimitives.ReadUInt16LittleEndian(records[(at + 4)..]);
            int nameLen = records[at + 6];
            if (recLen < 8 || at + recLen > records.Length)
            {
                break;
            }

            if (child != 0 && nameLen > 0 && at + 8 + nameLen <= records.Length)
            {
                entries.Add((Encoding.UTF8.GetString(records.Slice(at + 8, nameLen)), child));
            }

            at += recLen;
        }
    }

    private static bool IsInline(byte[] raw) => (BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(32)) & 0x10000000) != 0;

    /// <summary>
    /// The bytes of an inline_data inode: the 60 bytes of i_block, then the value of its "system.data" extended
    /// attribute, which lives in the inode's own attribute area after i_extra_isize.
    /// </summary>
    private static byte[] InlineData(byte[] raw)
    {
        var data = new List<byte>(raw.AsSpan(40, 60).ToArray());
        if (raw.Length > 132)
        {
            int extra = BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(128));
            int area = 128 + extra;
            if (area + 4 <= raw.Length && BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(area)) == 0xEA020000)
            {
                int first = area + 4;
                for (int at = first; at + 16 <= raw.Length && BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(at)) != 0;)
                {
                    int nameLen = raw[at], index = raw[at + 1];
                    int valueOffset = BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(at + 2));
                    uint valueInode = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(at + 4));
                    int valueSize = (int)BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(at + 8));
                    if (at + 16 + nameLen > raw.Length)
                    {
                        break;
                    }

                    if (index == 7 && nameLen == 4 && raw.AsSpan(at + 16, 4).SequenceEqual("data"u8) && valueInode == 0
                        && valueSize >= 0 && first + valueOffset + valueSize <= raw.Length)
                    {
                        data.AddRange(raw.AsSpan(first + valueOffset, valueSize).ToArray());
                        break;
                    }

                    at += (16 + nameLen + 3) & ~3;
                }
            }
        }

        return data.ToArray();
    }

    /// <summary>The file's blocks as (first logical block, first physical block or -1 for unwritten, count).</summary>
    private async Task<List<(long Logical, long Physical, long Count)>> ExtentsAsync(byte[] raw, CancellationToken ct)
    {
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(32));
        var iblock = raw.AsSpan(40, 60).ToArray();
        var result = new List<(long, long, long)>();
        if ((flags & 0x80000) != 0)
        {
            await WalkExtentsAsync(iblock, result, 0, ct).ConfigureAwait(false);
        }
        else
        {
            // ext2/3 block map: 12 direct blocks, then single, double and triple indirect blocks.
            long logical = 0;
            for (int i = 0; i < 15; i++)
            {
                long b = BinaryPrimitives.ReadUInt32LittleEndian(iblock.AsSpan(i * 4));
                int depth = i < 12 ? 0 : i - 11;
                logical = await WalkIndirectAsync(b, depth, logical, result, ct).ConfigureAwait(false);
            }
        }

        return result;
    }

    private async Task<long> WalkIndirectAsync(long block, int depth, long logical, List<(long, long, long)> result, CancellationToken ct)
    {
        long per = _blockSize / 4;
        long span = depth == 0 ? 1 : (long)Math.Pow(per, depth);
        if (block == 0)
        {
            return logical + span;
        }

        if (depth == 0)
        {
            result.Add((logical, block, 1));
            return logical + 1;
        }

        var buffer = new byte[_blockSize];
        await ReadBlockAsync(block, buffer, ct).ConfigureAwait(false);
        for (int i = 0; i < per; i++)
        {
            logical = await WalkIndirectAsync(BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(i * 4)), depth - 1, logical, result, ct).ConfigureAwait(false);
        }

        return logical;
    }

    private async Task WalkExtentsAsync(byte[] node, List<(long, long, long)> result, int level, CancellationToken ct)
    {
        if (BinaryPrimitives.ReadUInt16LittleEndian(node) != 0xF30A || level > 5)
        {
            throw new HavenException(ErrorCode.Corrupt, "an extent tree in the image's filesystem is damaged", "run e2fsck on a restored copy");
        }

        int entries = BinaryPrimitives.ReadUInt16LittleEndian(node.AsSpan(2));
        int depth = BinaryPrimitives.ReadUInt16LittleEndian(node.AsSpan(6));
        for (int i = 0; i < entries && 12 + ((i + 1) * 12) <= node.Length; i++)
        {
            var e = node.AsSpan(12 + (i * 12), 12);
            if (depth == 0)
            {
                long logical = BinaryPrimitives.ReadUInt32LittleEndian(e);
                int length = BinaryPrimitives.ReadUInt16LittleEndian(e[4..]);
                bool unwritten = length > 32768;
                long physical = ((long)BinaryPrimitives.ReadUInt16LittleEndian(e[6..]) << 32) | BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
                result.Add((logical, unwritten ? -1 : physical, unwritten ? length - 32768 : length));
            }
            else
            {
                long leaf = ((long)BinaryPrimitives.ReadUInt16LittleEndian(e[8..]) << 32) | BinaryPrimitives.ReadUInt32LittleEndian(e[4..]);
                var child = new byte[_blockSize];
                await ReadBlockAsync(leaf, child, ct).ConfigureAwait(false);
                await WalkExtentsAsync(child, result, level + 1, ct).ConfigureAwait(false);
            }
        }
    }

    private async Task<byte[]> ReadInodeAsync(uint inode, CancellationToken ct)
    {
        if (inode == 0)
        {
            throw new HavenException(ErrorCode.Corrupt, "a directory entry names inode 0");
        }

        long group = (inode - 1) / _inodesPerGroup;
        long index = (inode - 1) % _inodesPerGroup;
        var desc = new byte[_descSize];
        await _volume.ReadAsync(_offset + ((_firstDataBlock + 1) * _blockSize) + (group * _descSize), desc, ct).ConfigureAwait(false);
        long table = BinaryPrimitives.ReadUInt32LittleEndian(desc.AsSpan(8)) | (_descSize >= 64 ? (long)BinaryPrimitives.ReadUInt32LittleEndian(desc.AsSpan(40)) << 32 : 0);
        var raw = new byte[Math.Max(_inodeSize, 128)];
        await _volume.ReadAsync(_offset + (table * _blockSize) + (index * _inodeSize), raw, ct).ConfigureAwait(false);
        return raw;
    }

    private Task ReadBlockAsync(long block, byte[] buffer, CancellationToken ct)
    {
        long at = _offset + (block * _blockSize);
        return at < 0 || at + _blockSize > _volume.Size
            ? throw new HavenException(ErrorCode.Corrupt, $"the image's filesystem names block {block}, beyond the image")
            : _volume.ReadAsync(at, buffer, ct);
    }

    private static char Kind(byte[] raw) => (BinaryPrimitives.ReadUInt16LittleEndian(raw) & 0xF000) switch
    {
        0x4000 => 'd',
        0x8000 => 'f',
        0xA000 => 'l',
        _ => '?',
    };

    private static long Size(byte[] raw) =>
        BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(4)) | ((long)BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(108)) << 32);
}
