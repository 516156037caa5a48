using System.Runtime.InteropServices;

namespace Haven.Core.Posix;

/// <summary>The effective user and group of this process.</summary>
public static partial class ProcessIdentity
{
    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEffectiveUserId();

    [LibraryImport("libc", EntryPoint = "getegid")]
    private static partial uint GetEffectiveGroupId();

    public static uint UserId => GetEffectiveUserId();

    public static uint GroupId => GetEffectiveGroupId();
}
