using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace Haven.Core.Posix;

/// <summary>
/// Linux paths as bytes. A Linux file name is any byte sequence without '/' and NUL; it need not be UTF-8,
/// so paths are kept as bytes and turned into text only for display.
/// </summary>
public static class PosixPath
{
    /// <summary>The longest file name Linux file systems accept (NAME_MAX).</summary>
    public const int MaxNameLength = 255;

    /// <summary>The UTF-8 bytes of <paramref name="path"/>.</summary>
    public static byte[] FromString(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        return Encoding.UTF8.GetBytes(path);
    }

    /// <summary>
    /// A path as text for messages: UTF-8 decoded, each byte of an invalid sequence written as <c>\xNN</c>.
    /// Not reversible (a name may itself contain a backslash); never use it to reach the file again.
    /// </summary>
    public static string ToDisplay(ReadOnlySpan<byte> path)
    {
        if (Utf8.IsValid(path))
        {
            return Encoding.UTF8.GetString(path);
        }

        var text = new StringBuilder(path.Length + 16);
        Span<char> chars = stackalloc char[2];
        while (!path.IsEmpty)
        {
            var status = Rune.DecodeFromUtf8(path, out Rune rune, out int consumed);
            if (status == OperationStatus.Done)
            {
                int n = rune.EncodeToUtf16(chars);
                text.Append(chars[..n]);
            }
            else
            {
                for (int i = 0; i < consumed; i++)
                {
                    text.Append("\\x").Append(path[i].ToString("x2", System.Globalization.CultureInfo.InvariantCulture));
                }
            }

            path = path[consumed..];
        }

        return text.ToString();
    }

    /// <summary><paramref name="dir"/> and <paramref name="name"/> with exactly one '/' between them
    /// (none added when <paramref name="dir"/> already ends with '/', as the root "/" does).</summary>
    public static byte[] Join(ReadOnlySpan<byte> dir, ReadOnlySpan<byte> name)
    {
        if (dir.IsEmpty)
        {
            return name.ToArray();
        }

        bool slash = dir[^1] != (byte)'/';
        var joined = new byte[dir.Length + (slash ? 1 : 0) + name.Length];
        dir.CopyTo(joined);
        if (slash)
        {
            joined[dir.Length] = (byte)'/';
        }

        name.CopyTo(joined.AsSpan(joined.Length - name.Length));
        return joined;
    }

    /// <summary>
    /// Whether <paramref name="name"/> can be one path component: non-empty, at most 255 bytes, no '/' or NUL,
    /// and not "." or "..". Restore checks every name from a snapshot with this before using it.
    /// </summary>
    public static bool IsValidName(ReadOnlySpan<byte> name)
    {
        if (name.IsEmpty || name.Length > MaxNameLength)
        {
            return false;
        }

        if (name[0] == (byte)'.' && (name.Length == 1 || (name.Length == 2 && name[1] == (byte)'.')))
        {
            return false;
        }

        return name.IndexOfAny((byte)'/', (byte)0) < 0;
    }
}
